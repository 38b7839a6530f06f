"""Sigmoid binary cross-entropy: optax parity, fused gradient sigma(z) - y, accuracy."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import jaxsce
from tests._references import ulp_error

BCE = jaxsce.sigmoid_binary_cross_entropy


def _data(shape=(4, 6), dtype=jnp.float32):
    z = (3 * jax.random.normal(jax.random.PRNGKey(0), shape)).astype(dtype)
    y = jax.random.uniform(jax.random.PRNGKey(1), shape).astype(dtype)
    return z, y


def test_matches_optax():
    z, y = _data()
    np.testing.assert_allclose(BCE(z, y), optax.sigmoid_binary_cross_entropy(z, y), rtol=1e-6)


def test_gradient_is_sigmoid_minus_y(x64):
    z, y = _data(dtype=jnp.float64)
    z = z.at[0, 0].set(0.0)  # the branch point of the formula
    closed = jax.nn.sigmoid(z) - y
    fused = jax.grad(lambda z: jnp.sum(BCE(z, y)))(z)
    autodiff = jax.grad(lambda z: jnp.sum(BCE(z, y, fused=False)))(z)
    textbook = jax.grad(lambda z: jnp.sum(optax.sigmoid_binary_cross_entropy(z, y)))(z)
    for g in (fused, autodiff, textbook):
        np.testing.assert_allclose(g, closed, atol=1e-15)
    assert np.abs(fused - jax.nn.sigmoid(z)).max() > 1e-2  # a wrong formula is rejected
    np.testing.assert_allclose(jax.grad(lambda y: jnp.sum(BCE(z, y)))(y), -z, atol=1e-15)
    hess = jax.jacrev(jax.grad(lambda z: jnp.sum(BCE(z, y[0]))))(z[0])
    s = jax.nn.sigmoid(z[0])
    np.testing.assert_allclose(hess, jnp.diag(s * (1 - s)), atol=1e-15)


@pytest.mark.parametrize("transform", ["jit", "vmap", "jacfwd-plain"])
def test_transforms(transform):
    z, y = _data()
    if transform == "jit":
        np.testing.assert_allclose(jax.jit(BCE)(z, y), BCE(z, y), rtol=1e-6)
    elif transform == "vmap":
        np.testing.assert_allclose(jax.vmap(BCE)(z, y), BCE(z, y), rtol=1e-6)
    else:
        jac = jax.jacfwd(lambda z: BCE(z, y[0], fused=False))(z[0])
        np.testing.assert_allclose(jnp.diag(jac), jax.nn.sigmoid(z[0]) - y[0], rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision(dtype):
    z, y = _data(dtype=dtype)
    loss, grad = jax.value_and_grad(lambda z: jnp.sum(BCE(z, y)))(z)
    assert loss.dtype == jnp.float32 and grad.dtype == dtype


def test_confident_predictions_within_a_few_ulp():
    z = np.array([5.0, 15.0, 30.0, 60.0, -15.0, -60.0], np.float32)
    y = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0], np.float32)
    with mpmath.workdps(34):
        ref_loss = [float(mpmath.log1p(mpmath.exp(-abs(mpmath.mpf(float(v)))))) for v in z]
        sig = [1 / (1 + mpmath.exp(-mpmath.mpf(float(v)))) for v in z]
        ref_grad = [float(s - mpmath.mpf(float(t))) for s, t in zip(sig, y)]
    loss = BCE(z, y)
    grad = jax.grad(lambda z: jnp.sum(BCE(z, y)))(z)
    assert ulp_error(loss, ref_loss).max() <= 2
    assert ulp_error(grad, ref_grad).max() <= 2
    naive = jax.nn.sigmoid(z) - y  # rounds to 0 at z = 30: rejected by the bound
    assert ulp_error(naive, ref_grad).max() > 1e3


def test_nonfinite_logits_give_nan():
    z = jnp.array([jnp.nan, jnp.inf, -jnp.inf])
    y = jnp.array([1.0, 1.0, 0.0])
    assert np.all(np.isnan(BCE(z, y)))
    assert np.all(np.isnan(jax.grad(lambda z: jnp.sum(BCE(z, y)))(z)))


def test_bad_input():
    with pytest.raises(TypeError, match="`logits`"):
        BCE(jnp.zeros(3, jnp.int32), jnp.zeros(3))
    with pytest.raises(TypeError, match="`labels`"):
        BCE(jnp.zeros(3), jnp.zeros(3, jnp.complex64))
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        BCE(jnp.zeros(3), jnp.zeros(4))


# -- integer labels, pos_weight, where, reduction (issue 13 item 6) -----------------


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool"])
def test_integer_and_boolean_labels_as_optax(dtype):
    z, _ = _data()
    y = jax.random.bernoulli(jax.random.PRNGKey(2), 0.5, z.shape).astype(dtype)
    want = optax.sigmoid_binary_cross_entropy(z, y.astype(jnp.float32))
    np.testing.assert_allclose(BCE(z, y), want, rtol=1e-6)
    g = jax.grad(lambda z: jnp.sum(BCE(z, y)))(z)
    np.testing.assert_allclose(g, jax.nn.sigmoid(z) - y.astype(jnp.float32), atol=1e-7)


def _pos_weight_textbook(z, y, w):
    """-w y log sigma(z) - (1 - y) log(1 - sigma(z)), with jax.nn: independent of jaxsce."""
    return -w * y * jax.nn.log_sigmoid(z) - (1 - y) * jax.nn.log_sigmoid(-z)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autodiff"])
def test_pos_weight_loss_and_gradients(x64, fused):
    z, y = _data(dtype=jnp.float64)
    z = z.at[0, 0].set(0.0)
    w = jnp.linspace(0.5, 3.0, z.shape[-1], dtype=jnp.float64)[None]  # one per class

    def ours(z, y, w):
        return jnp.sum(BCE(z, y, pos_weight=w, fused=fused))

    def ref(z, y, w):
        return jnp.sum(_pos_weight_textbook(z, y, w))

    np.testing.assert_allclose(ours(z, y, w), ref(z, y, w), rtol=1e-14)
    for arg in range(3):
        np.testing.assert_allclose(
            jax.grad(ours, arg)(z, y, w), jax.grad(ref, arg)(z, y, w), rtol=1e-12, atol=1e-14
        )
    lw = 1 + (w - 1) * y
    closed = lw * jax.nn.sigmoid(z) - w * y
    np.testing.assert_allclose(jax.grad(ours)(z, y, w), closed, atol=1e-14)
    assert np.abs(closed - (jax.nn.sigmoid(z) - y)).max() > 1e-2  # w = 1 is rejected


def test_pos_weight_keeps_confident_accuracy():
    z = np.array([15.0, 30.0, -15.0, -30.0], np.float32)
    y = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
    w = np.float32(3.0)
    with mpmath.workdps(50):
        mz = [mpmath.mpf(float(v)) for v in z]
        sig = [1 / (1 + mpmath.exp(-v)) for v in mz]
        ref_loss = [
            float(-w * t * mpmath.log(s) - (1 - t) * mpmath.log(1 - s)) for s, t in zip(sig, y)
        ]
        ref_grad = [float((1 + (w - 1) * t) * s - w * t) for s, t in zip(sig, y)]
    loss = BCE(z, y, pos_weight=jnp.asarray(w))
    grad = jax.grad(lambda z: jnp.sum(BCE(z, y, pos_weight=jnp.asarray(w))))(z)
    assert ulp_error(loss, ref_loss).max() <= 2
    assert ulp_error(grad, ref_grad).max() <= 2


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autodiff"])
def test_where_and_reductions(fused):
    z, y = _data()
    z = z.at[1, 2].set(jnp.nan)  # a masked entry: its logit never reaches the result
    where = jnp.ones(z.shape, bool).at[1, 2].set(False).at[0, :3].set(False)
    full = np.asarray(optax.sigmoid_binary_cross_entropy(z, y))
    kept = np.asarray(where)
    out = BCE(z, y, where=where, fused=fused)
    np.testing.assert_allclose(out, np.where(kept, full, 0.0), rtol=1e-6)
    total = np.where(kept, full, 0.0).sum()
    np.testing.assert_allclose(
        BCE(z, y, where=where, reduction="sum", fused=fused), total, rtol=1e-6
    )
    np.testing.assert_allclose(
        BCE(z, y, where=where, reduction="mean", fused=fused), total / kept.sum(), rtol=1e-6
    )
    g = jax.grad(lambda z: BCE(z, y, where=where, reduction="mean", fused=fused))(z)
    assert np.all(g[~kept] == 0) and np.all(np.isfinite(g))
    want = np.where(kept, jax.nn.sigmoid(jnp.nan_to_num(z)) - y, 0.0) / kept.sum()
    np.testing.assert_allclose(g, want, atol=1e-7)
    zf = jnp.nan_to_num(z)
    np.testing.assert_allclose(
        BCE(zf, y, reduction="mean"), np.mean(optax.sigmoid_binary_cross_entropy(zf, y)), rtol=1e-6
    )
    assert BCE(z, y, where=jnp.zeros(z.shape, bool), reduction="mean") == 0


def test_traced_pos_weight():
    z, y = _data()
    f = jax.jit(lambda z, w: BCE(z, y, pos_weight=w, reduction="sum"))
    np.testing.assert_allclose(f(z, 2.0), BCE(z, y, pos_weight=2.0, reduction="sum"), rtol=1e-6)
    assert np.isnan(f(z, -1.0))
    err, _ = checkify.checkify(f)(z, -1.0)
    with pytest.raises(Exception, match="pos_weight.*non-negative"):
        err.throw()
    with pytest.raises(ValueError, match="pos_weight.*non-negative"):
        BCE(z, y, pos_weight=-1.0)


def test_bad_options():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="sigmoid_binary_cross_entropy.*reduction.*'avg'"):
        BCE(z, z, reduction="avg")
    with pytest.raises(ValueError, match=r"pos_weight.*\(2,\).*\(2, 3\)"):
        BCE(z, z, pos_weight=jnp.ones(2))
    with pytest.raises(TypeError, match="where.*boolean"):
        BCE(z, z, where=jnp.ones((2, 3)))


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_hessian_runs_through_the_fused_path(x64, pos_weight):
    # jax.hessian is forward over reverse: the fused rule's forward pass must
    # be plain JAX code. The closed form: diag((1 + (w - 1) y) s (1 - s)).
    z = jnp.array([0.3, -1.2, 2.5], jnp.float64)
    y = jnp.array([1.0, 0.0, 0.5], jnp.float64)

    def loss(z, fused):
        return jnp.sum(
            jaxsce.sigmoid_binary_cross_entropy(z, y, pos_weight=pos_weight, fused=fused)
        )

    h = jax.hessian(loss)(z, True)
    s = jax.nn.sigmoid(z)
    lw = 1.0 if pos_weight is None else 1 + (pos_weight - 1) * y
    np.testing.assert_allclose(h, jax.hessian(loss)(z, False), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(h, jnp.diag(lw * s * (1 - s)), rtol=1e-13, atol=1e-15)
    # A wrong closed form (without the pos_weight factor) is rejected.
    if pos_weight is not None:
        assert not np.allclose(h, jnp.diag(s * (1 - s)), rtol=1e-3)
