"""Every public function under jit, vmap and grad, in float32, float64, bfloat16, float16.

Each transformed result is compared with the untransformed float64 computation
(``vmap`` with the batched call, ``grad`` with the plain autodiff formulation
or ``jax.nn``), with a tolerance set by the input dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsce

N, C = 3, 6


def _inputs(dtype):
    z = 2 * jax.random.normal(jax.random.PRNGKey(0), (N, C), jnp.float64)
    labels = jnp.array([0, 5, 2])
    soft = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (N, C), jnp.float64))
    return z.astype(dtype), labels, soft.astype(dtype)


# name -> (function of (z, labels, soft), reference of float64 (z, labels, soft))
FUNCS = {
    "logsumexp": (lambda z, y, s: jaxsce.logsumexp(z), lambda z, y, s: jax.nn.logsumexp(z, -1)),
    "softmax": (lambda z, y, s: jaxsce.softmax(z), lambda z, y, s: jax.nn.softmax(z)),
    "log_softmax": (lambda z, y, s: jaxsce.log_softmax(z), lambda z, y, s: jax.nn.log_softmax(z)),
    "ce_int": (
        lambda z, y, s: jaxsce.softmax_cross_entropy_with_integer_labels(z, y),
        lambda z, y, s: jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[:, None], -1)[:, 0],
    ),
    "ce_soft": (
        lambda z, y, s: jaxsce.softmax_cross_entropy(z, s),
        lambda z, y, s: -jnp.sum(s * jax.nn.log_softmax(z), -1),
    ),
    "bce": (
        lambda z, y, s: jaxsce.sigmoid_binary_cross_entropy(z, s),
        lambda z, y, s: jax.nn.softplus(z) - z * s,
    ),
}
DTYPES = {
    "float32": jnp.float32,
    "float64": jnp.float64,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}
TOL = {"float32": 1e-5, "float64": 1e-12, "bfloat16": 5e-2, "float16": 5e-3}


@pytest.mark.parametrize("transform", ["jit", "vmap", "grad"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUNCS)
def test_transform(x64, name, dtype, transform):
    fn, ref = FUNCS[name]
    z, labels, soft = _inputs(DTYPES[dtype])
    z64, soft64 = z.astype(jnp.float64), soft.astype(jnp.float64)
    if transform == "jit":
        got, want = jax.jit(fn)(z, labels, soft), ref(z64, labels, soft64)
    elif transform == "vmap":
        one = lambda z, y, s: fn(z[None], y[None], s[None])[0]  # noqa: E731
        got, want = jax.vmap(one)(z, labels, soft), ref(z64, labels, soft64)
    else:
        got = jax.grad(lambda z: jnp.sum(jnp.sin(fn(z, labels, soft))))(z)
        assert got.dtype == z.dtype
        want = jax.grad(lambda z: jnp.sum(jnp.sin(ref(z, labels, soft64))))(z64)
    got = np.asarray(got.astype(jnp.float64))
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize(
    "option",
    ["label_smoothing", "z_loss", "normalizer", "logit_softcap", "pos_weight"],
)
def test_vmap_over_an_array_option(x64, option):
    """A batch of option values under vmap equals one call per Python value."""
    z, labels, _ = _inputs(jnp.float32)
    values = {
        "label_smoothing": [0.0, 0.1, 0.4],
        "z_loss": [0.0, 1e-2, 1.0],
        "normalizer": [1.0, 3.0, 10.0],
        "logit_softcap": [1.0, 5.0, 30.0],
        "pos_weight": [0.5, 1.0, 3.0],
    }[option]
    if option == "pos_weight":
        y = (z > 0).astype(jnp.int32)

        def f(v):
            return jaxsce.sigmoid_binary_cross_entropy(z, y, pos_weight=v, reduction="mean")
    else:

        def f(v):
            return jaxsce.softmax_cross_entropy_with_integer_labels(
                z, labels, reduction="mean", **{option: v}
            )

    got = jax.vmap(f)(jnp.asarray(values, jnp.float32))
    want = [f(v) for v in values]
    np.testing.assert_allclose(got, want, rtol=2e-6)
    assert np.ptp(np.asarray(want)) > 1e-3  # the option changes the loss
