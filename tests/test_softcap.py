"""Soft-capped logits (``logit_softcap=c``: z -> c tanh(z / c)) in the logits losses.

The fused backward pass applies the chain rule ``1 - tanh^2(z / c)`` itself;
it is checked against JAX differentiating the plain formulation in float64,
and against a 34-digit reference in float32.
"""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

import jaxsce
from tests._references import DPS, integer_ce_mp, ulp_error

INT = jaxsce.softmax_cross_entropy_with_integer_labels
SOFT = jaxsce.softmax_cross_entropy
CAP = 30.0  # Gemma 2's final_logit_softcapping


def _plain_int(z, y, cap, where=None, z_loss=0.0):
    zc = cap * jnp.tanh(z / cap)
    lse = jax.nn.logsumexp(zc, axis=-1, where=where)
    ce = lse - jnp.take_along_axis(zc, y[:, None], axis=-1)[:, 0]
    return jnp.mean(ce + z_loss * lse**2)


def _plain_soft(z, p, cap):
    zc = cap * jnp.tanh(z / cap)
    return jnp.mean(jnp.sum(p * (jax.nn.logsumexp(zc, axis=-1, keepdims=True) - zc), -1))


def _data(dtype, n=6, c=9, scale=40.0, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    z = (scale * jax.random.normal(k1, (n, c))).astype(dtype)
    y = jax.random.randint(k2, (n,), 0, c)
    p = jax.nn.softmax(jax.random.normal(k3, (n, c))).astype(dtype)
    return z, y, p


@pytest.mark.parametrize("fused", [True, False])
def test_integer_labels_match_autodiff_of_the_plain_formula(x64, fused):
    z, y, _ = _data(jnp.float64)
    y = jnp.where(y == 4, 3, y)  # no label on the masked class
    where = (jnp.arange(9) != 4)[None, :]  # a class mask (shape (1, C))
    ours = jax.value_and_grad(
        lambda z: INT(
            z, y, where=where, z_loss=1e-3, reduction="mean", logit_softcap=CAP, fused=fused
        )
    )(z)
    want = jax.value_and_grad(lambda z: _plain_int(z, y, CAP, where=where, z_loss=1e-3))(z)
    np.testing.assert_allclose(ours[0], want[0], rtol=1e-13)
    np.testing.assert_allclose(ours[1], want[1], rtol=1e-12, atol=1e-15)
    # The check can fail: leaving out the factor 1 - tanh^2 is far off.
    no_factor = jax.grad(lambda zc: _plain_int(zc, y, 1e30, where=where, z_loss=1e-3))(
        CAP * jnp.tanh(z / CAP)
    )
    assert np.abs(no_factor - want[1]).max() > 1e-3


@pytest.mark.parametrize("fused", [True, False])
def test_probabilities_match_autodiff_of_the_plain_formula(x64, fused):
    z, _, p = _data(jnp.float64, seed=1)
    f = jax.value_and_grad(
        lambda z, p: SOFT(z, p, reduction="mean", logit_softcap=CAP, fused=fused), argnums=(0, 1)
    )
    loss, (gz, gp) = f(z, p)
    want_loss, (wz, wp) = jax.value_and_grad(lambda z, p: _plain_soft(z, p, CAP), (0, 1))(z, p)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-13)
    np.testing.assert_allclose(gz, wz, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gp, wp, rtol=1e-12, atol=1e-15)


def test_large_cap_is_no_cap():
    z, y, _ = _data(jnp.float32, scale=3.0)
    capped = jax.grad(lambda z: INT(z, y, reduction="sum", logit_softcap=1e8))(z)
    plain = jax.grad(lambda z: INT(z, y, reduction="sum"))(z)
    np.testing.assert_allclose(capped, plain, rtol=1e-6, atol=1e-7)


def _reference(z, labels, cap):
    """Loss and gradient of float32 capped logits at 34 digits.

    The capped logits are the float32 numbers ``cap * tanh(z / cap)``: their
    rounding is the cap's own, before the loss. The gradient with respect to
    the raw logits is ``(p - onehot) sech^2(z / cap)``, the factor exact.
    """
    zc = np.asarray(cap * jnp.tanh(jnp.asarray(z) / cap))
    losses, grads = [], []
    for row, zc_row, label in zip(z, zc, labels):
        loss, dzc = integer_ce_mp(zc_row, int(label))
        with mpmath.workdps(DPS):
            sech2 = [mpmath.sech(mpmath.mpf(float(v)) / cap) ** 2 for v in row]
            grads.append([float(mpmath.mpf(d) * s) for d, s in zip(dzc, sech2)])
        losses.append(loss)
    return np.array(losses), np.array(grads)


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_float32_within_the_accuracy_bound(num_classes):
    """Confident rows (margins 0..20 after the cap) stay within the suite's 4 ulp."""
    rng = np.random.default_rng(num_classes)
    # A power of two, so that z / cap is exact: for a cap of 30, XLA may divide
    # under jit as a product with 1/30 and round the capped logits differently
    # from the reference (the loss of a confident row then reflects that
    # rounding of the cap, not the loss; the gradient stays within 3.5 ulp).
    cap = 32.0
    margins = (0.0, 1.0, 5.0, 10.0, 20.0)
    z = rng.uniform(-12, 0, (len(margins), num_classes)).astype(np.float32)
    labels = rng.integers(num_classes, size=len(margins))
    for row, margin in enumerate(margins):
        others = np.delete(z[row], labels[row]).max()
        # the raw logit whose capped value sits `margin` above the others' largest
        target = np.tanh(others / cap) + margin / cap
        z[row, labels[row]] = np.float32(cap * np.arctanh(min(target, 0.999)))
    loss_ref, grad_ref = _reference(z, labels, cap)
    loss, grad = jax.jit(
        jax.vmap(jax.value_and_grad(lambda z, y: INT(z, y, logit_softcap=cap)))
    )(z, labels)
    assert ulp_error(loss, loss_ref).max() <= 4
    assert ulp_error(grad, grad_ref).max() <= 4
    # The bound rejects JAX differentiating the textbook capped loss in float32.
    textbook = jax.vmap(jax.value_and_grad(lambda z, y: _plain_int(z[None], y[None], cap)))
    t_loss, t_grad = textbook(jnp.asarray(z), jnp.asarray(labels))
    assert max(ulp_error(t_loss, loss_ref).max(), ulp_error(t_grad, grad_ref).max()) > 100


def test_residuals_are_the_logits_only():
    z, y, _ = _data(jnp.float32, n=16, c=1000)
    _, vjp_fn = jax.vjp(lambda z: INT(z, y, logit_softcap=CAP), z)
    leaves = [x for x in jax.tree_util.tree_leaves(vjp_fn) if hasattr(x, "shape")]
    big = [x for x in leaves if x.size >= z.size]
    assert len(big) == 1 and np.array_equal(big[0], z)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "30", True])
@pytest.mark.parametrize("fn", [INT, SOFT], ids=["integer", "probabilities"])
def test_bad_cap_is_rejected(bad, fn):
    z, y, p = _data(jnp.float32)
    with pytest.raises(ValueError, match=rf"{fn.__name__}: `logit_softcap` must be"):
        fn(z, y if fn is INT else p, logit_softcap=bad)
