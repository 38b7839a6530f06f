"""Sigmoid binary cross-entropy: optax parity, fused gradient sigma(z) - y, accuracy."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest

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
        BCE(jnp.zeros(3), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        BCE(jnp.zeros(3), jnp.zeros(4))
