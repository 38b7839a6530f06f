"""Tests of the fused linear + softmax cross-entropy (jaxsce._linear)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsce._linear import linear_softmax_cross_entropy
from tests._references import integer_ce_mp, ulp_error

BOUND = 4  # ulp, the core library's accuracy bound


# --------------------------------------------------------------------------
# Independent references.
# --------------------------------------------------------------------------


def _plain_losses(
    hidden, weight, labels, bias=None, ignore_index=None, label_smoothing=0.0, z_loss=0.0
):
    """Per-example loss from the full logits, plain jnp (JAX differentiates it)."""
    logits = jnp.einsum("...d,dv->...v", hidden.astype(jnp.float32), weight.astype(jnp.float32))
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)[(None,) * (logits.ndim - 1)]
    v = logits.shape[-1]
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = (1.0 - label_smoothing) * jax.nn.one_hot(labels, v) + label_smoothing / v
    loss = jnp.sum(target * (lse[..., None] - logits), axis=-1) + z_loss * lse**2
    if ignore_index is not None:
        loss = jnp.where(labels == ignore_index, 0.0, loss)
    return loss


def _plain(
    hidden,
    weight,
    labels,
    bias=None,
    ignore_index=None,
    reduction="none",
    label_smoothing=0.0,
    z_loss=0.0,
):
    loss = _plain_losses(hidden, weight, labels, bias, ignore_index, label_smoothing, z_loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "mean":
        counted = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
        return jnp.sum(loss) / jnp.sum(counted).astype(loss.dtype)
    return loss


def _data(n=12, d=8, v=37, dtype=jnp.float32, seed=0, batch_shape=None):
    k = jax.random.split(jax.random.key(seed), 4)
    shape = (n,) if batch_shape is None else batch_shape
    hidden = jax.random.normal(k[0], (*shape, d), jnp.float32).astype(dtype)
    weight = (jax.random.normal(k[1], (d, v), jnp.float32) / np.sqrt(d) * 3).astype(dtype)
    bias = jax.random.normal(k[2], (v,), jnp.float32).astype(dtype)
    labels = jax.random.randint(k[3], shape, 0, v)
    return hidden, weight, bias, labels


# --------------------------------------------------------------------------
# Values and gradients against the unfused computation.
# --------------------------------------------------------------------------

CASES = {
    "chunk-divides": dict(chunk_size=8, v=40),
    "chunk-tail-bias": dict(chunk_size=5, v=37, bias=True),
    "ignore-sum": dict(chunk_size=64, v=37, ignore_index=3, reduction="sum"),
    "smoothing-z-loss": dict(chunk_size=8, v=37, label_smoothing=0.1, z_loss=1e-2),
    "all-options": dict(
        chunk_size=6,
        v=37,
        bias=True,
        ignore_index=-100,
        reduction="mean",
        label_smoothing=0.2,
        z_loss=1e-3,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_unfused(case):
    case = dict(case)
    v, use_bias = case.pop("v"), case.pop("bias", False)
    chunk_size = case.pop("chunk_size")
    hidden, weight, bias, labels = _data(v=v)
    if case.get("ignore_index") is not None:
        labels = labels.at[::3].set(case["ignore_index"])
    bias = bias if use_bias else None
    reduction = case.get("reduction", "none")

    def fused(h, w, b):
        return linear_softmax_cross_entropy(h, w, labels, bias=b, chunk_size=chunk_size, **case)

    def plain(h, w, b):
        return _plain(h, w, labels, bias=b, **case)

    def total(fn):
        return lambda *a: jnp.sum(
            fn(*a) * (1.0 + jnp.arange(labels.size, dtype=jnp.float32).reshape(labels.shape))
            if reduction == "none"
            else fn(*a)
        )

    np.testing.assert_allclose(
        jax.jit(fused)(hidden, weight, bias),
        jax.jit(plain)(hidden, weight, bias),
        rtol=2e-6,
        atol=2e-6,
    )
    argnums = (0, 1, 2) if use_bias else (0, 1)
    got = jax.jit(jax.grad(total(fused), argnums))(hidden, weight, bias)
    want = jax.jit(jax.grad(total(plain), argnums))(hidden, weight, bias)
    for g, r in zip(got, want):
        assert g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=2e-5)


def test_wrong_formula_is_rejected_by_the_same_check():
    """The tolerance above distinguishes a gradient missing the z-loss factor."""
    hidden, weight, _, labels = _data()
    got = jax.grad(
        lambda w: linear_softmax_cross_entropy(
            hidden, w, labels, chunk_size=8, z_loss=1e-2, reduction="sum"
        )
    )(weight)
    wrong = jax.jit(jax.grad(lambda w: _plain(hidden, w, labels, reduction="sum")))(weight)
    assert not np.allclose(got, wrong, rtol=1e-5, atol=2e-5)


def test_batch_shape_and_vmap():
    hidden, weight, bias, labels = _data(batch_shape=(2, 3))
    fn = functools.partial(linear_softmax_cross_entropy, bias=bias, chunk_size=8)
    got = jax.jit(fn)(hidden, weight, labels)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, _plain(hidden, weight, labels, bias=bias), rtol=2e-6)
    np.testing.assert_allclose(jax.vmap(fn, in_axes=(0, None, 0))(hidden, weight, labels), got)


def test_bfloat16_inputs_accumulate_in_float32():
    hidden, weight, bias, labels = _data(dtype=jnp.bfloat16, d=64)

    def fused(h, w, b):
        return linear_softmax_cross_entropy(h, w, labels, bias=b, chunk_size=8, reduction="sum")

    loss = fused(hidden, weight, bias)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(
        loss, _plain(hidden, weight, labels, bias=bias, reduction="sum"), rtol=1e-5
    )
    got = jax.grad(fused, (0, 1, 2))(hidden, weight, bias)
    want = jax.jit(
        jax.grad(lambda h, w, b: _plain(h, w, labels, bias=b, reduction="sum"), (0, 1, 2))
    )(hidden.astype(jnp.float32), weight.astype(jnp.float32), bias.astype(jnp.float32))
    for g, r in zip(got, want):
        assert g.dtype == jnp.bfloat16
        # p - y is rounded to bfloat16 before the products: bfloat16 tolerance.
        np.testing.assert_allclose(g.astype(jnp.float32), r, rtol=3e-2, atol=3e-2)


# --------------------------------------------------------------------------
# Accuracy of confident predictions against mpmath.
# --------------------------------------------------------------------------


def _confident_problem(v=1000, margins=(0.0, 5.0, 20.0, 30.0, 40.0), offsets=(0.0, 1e4, -1e4)):
    """Rows of logits with the label ahead by each margin; hidden rows are one-hot.

    With one-hot rows of ``hidden`` the logits are exactly the rows of ``weight``
    and the gradient of ``weight`` is exactly the gradient of the logits.
    """
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for offset in offsets:
        for margin in margins:
            z = rng.uniform(-5.0, 0.0, v) + offset
            y = int(rng.integers(v))
            z[y] = np.max(np.delete(z, y)) + margin
            rows.append(z.astype(np.float32))
            labels.append(y)
    weight = np.stack(rows)  # (D = number of rows, V)
    hidden = np.eye(len(rows), dtype=np.float32)
    return jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(labels, jnp.int32)


def _worst_ulp_errors(loss, grad_logits, weight, labels):
    loss_err, grad_err = 0.0, 0.0
    for i, y in enumerate(np.asarray(labels)):
        ref_loss, ref_grad = integer_ce_mp(np.asarray(weight[i]), int(y))
        loss_err = max(loss_err, float(ulp_error(loss[i], ref_loss)))
        grad_err = max(grad_err, float(ulp_error(grad_logits[i], ref_grad).max()))
    return loss_err, grad_err


def test_confident_predictions_within_a_few_ulp():
    hidden, weight, labels = _confident_problem()
    fn = functools.partial(linear_softmax_cross_entropy, chunk_size=128)  # 1000 % 128 != 0
    loss = jax.jit(fn)(hidden, weight, labels)
    grad = jax.jit(jax.grad(lambda w: jnp.sum(fn(hidden, w, labels))))(weight)
    loss_err, grad_err = _worst_ulp_errors(loss, grad, weight, labels)
    assert loss_err <= BOUND, loss_err
    assert grad_err <= BOUND, grad_err


def test_confident_accuracy_check_rejects_the_unfused_formula():
    """optax (lse - z_y, p_y - 1) fails the very same bound."""
    hidden, weight, labels = _confident_problem()

    def unfused(w):
        return optax.softmax_cross_entropy_with_integer_labels(hidden @ w, labels)

    grad = jax.grad(lambda w: jnp.sum(unfused(w)))(weight)
    loss_err, grad_err = _worst_ulp_errors(unfused(weight), grad, weight, labels)
    assert loss_err > BOUND and grad_err > BOUND


# --------------------------------------------------------------------------
# Labels, -inf rows and bad arguments.
# --------------------------------------------------------------------------


def test_ignored_and_bad_labels():
    hidden, weight, _, labels = _data()
    labels = labels.at[0].set(-100).at[1].set(-1).at[2].set(37)
    fn = functools.partial(linear_softmax_cross_entropy, ignore_index=-100, chunk_size=8)
    loss = fn(hidden, weight, labels)
    assert loss[0] == 0.0
    assert np.isnan(loss[1]) and np.isnan(loss[2])  # never a silent wrap of -1 to V - 1
    assert np.all(np.isfinite(loss[3:]))
    ok = labels.at[1].set(-100).at[2].set(-100)
    dh = jax.grad(lambda h: jnp.sum(fn(h, weight, ok)))(hidden)
    np.testing.assert_array_equal(dh[:3], 0.0)
    assert np.all(np.abs(dh[3:]) > 0)
    # "mean" divides by the number of examples not ignored; all ignored gives 0 (core rule).
    mean = fn(hidden, weight, ok, reduction="mean")
    np.testing.assert_allclose(mean, jnp.sum(fn(hidden, weight, ok)) / (ok.size - 3), rtol=1e-6)
    all_ignored = jnp.full_like(labels, -100)
    assert fn(hidden, weight, all_ignored, reduction="mean") == 0.0
    dw = jax.grad(lambda w: fn(hidden, w, all_ignored, reduction="mean"))(weight)
    np.testing.assert_array_equal(dw, 0.0)


def test_minus_inf_rows_give_inf_loss_and_no_nan_gradient():
    hidden, weight, bias, labels = _data()
    bias = bias.at[5:].set(-jnp.inf)  # a padded vocabulary: columns 5.. never predicted
    labels = (labels % 5).at[0].set(9)
    fn = functools.partial(linear_softmax_cross_entropy, chunk_size=8)
    loss = fn(hidden, weight, labels, bias=bias)
    assert loss[0] == jnp.inf and np.isfinite(loss[1])
    dead = jnp.full_like(bias, -jnp.inf)
    assert np.all(fn(hidden, weight, labels, bias=dead) == jnp.inf)
    grads = jax.grad(lambda h, w, b: jnp.sum(fn(h, w, labels.at[0].set(2), bias=b)), (0, 1, 2))(
        hidden, weight, bias
    )
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(grads[2][5:], 0.0)
    dead_grads = jax.grad(lambda h, w, b: jnp.sum(fn(h, w, labels, bias=b)), (0, 1, 2))(
        hidden, weight, dead
    )
    assert all(np.all(g == 0.0) for g in dead_grads)


BAD_ARGUMENTS = {
    "reduction": (dict(reduction="avg"), ValueError, "reduction='avg'"),
    "smoothing-high": (dict(label_smoothing=1.5), ValueError, "label_smoothing=1.5"),
    "smoothing-low": (dict(label_smoothing=-0.1), ValueError, "label_smoothing=-0.1"),
    "z-loss": (dict(z_loss=-1.0), ValueError, "z_loss=-1.0"),
    "chunk": (dict(chunk_size=0), ValueError, "chunk_size=0"),
    "ignore-index": (dict(ignore_index=1.5), ValueError, "ignore_index=1.5"),
    "bias-shape": (dict(bias=jnp.zeros(3)), ValueError, r"bias shape \(3,\)"),
}


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_raise(kwargs, error, match):
    hidden, weight, _, labels = _data()
    with pytest.raises(error, match=match):
        linear_softmax_cross_entropy(hidden, weight, labels, **kwargs)


def test_bad_shapes_and_dtypes_raise():
    hidden, weight, _, labels = _data()
    with pytest.raises(ValueError, match=r"\(12, 8\).*\(7, 37\)"):
        linear_softmax_cross_entropy(hidden, weight[:7], labels)
    with pytest.raises(ValueError, match=r"\(11,\).*\(12,\)"):
        linear_softmax_cross_entropy(hidden, weight, labels[:11])
    with pytest.raises(TypeError, match="integer"):
        linear_softmax_cross_entropy(hidden, weight, labels.astype(jnp.float32))


# --------------------------------------------------------------------------
# Memory: residuals and XLA's temporary buffers.
# --------------------------------------------------------------------------


def _largest_residual(fn, *args):
    _, pullback = jax.vjp(fn, *args)
    return max(
        leaf.size for leaf in jax.tree_util.tree_leaves(pullback) if isinstance(leaf, jax.Array)
    )


def test_residuals_hold_no_logits_sized_array():
    hidden, weight, bias, labels = _data(n=16, d=8, v=40)  # N x V = 640 > D x V = 320
    n_by_v = hidden.shape[0] * weight.shape[1]
    fused = functools.partial(
        linear_softmax_cross_entropy, labels=labels, chunk_size=8, label_smoothing=0.1, z_loss=1e-3
    )
    assert _largest_residual(lambda h, w, b: fused(h, w, bias=b), hidden, weight, bias) < n_by_v
    # The same check catches the unfused computation, which keeps the logits.
    assert (
        _largest_residual(lambda h, w, b: _plain(h, w, labels, bias=b), hidden, weight, bias)
        >= n_by_v
    )


def _temp_bytes(loss_fn, n, d, v):
    args = (
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_temporary_memory_is_bounded_and_flat_in_vocabulary():
    def fused(h, w, y):
        return linear_softmax_cross_entropy(h, w, y, reduction="mean", method="recompute")

    def unfused(h, w, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(h @ w, y))

    small = _temp_bytes(fused, 2048, 1024, 32768)
    large = _temp_bytes(fused, 2048, 1024, 131072)
    assert small <= 64e6, small
    assert abs(large - small) <= 0.01 * small, (small, large)
    # The bound can fail: the unfused computation needs the N x V logits and their gradient.
    assert _temp_bytes(unfused, 2048, 1024, 32768) > 64e6


def test_precompute_memory_is_one_weight_buffer_and_flat_in_rows():
    """"precompute": at most 64 MiB plus one weight-sized buffer, whatever N is."""

    def fused(h, w, y):
        return linear_softmax_cross_entropy(h, w, y, reduction="mean", method="precompute")

    d, v = 1024, 32768
    weight_bytes = 4 * d * v
    small = _temp_bytes(fused, 2048, d, v)
    large = _temp_bytes(fused, 8192, d, v)
    assert small <= 64 * 2**20 + weight_bytes, small
    assert large <= 64 * 2**20 + weight_bytes, large
    # Flat in N but for the O(N D) gradient of hidden kept between the passes.
    assert large - small <= 2 * 4 * (8192 - 2048) * d, (small, large)
    # The bound can fail: the unfused computation's temporaries grow with N.
    def unfused(h, w, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(h @ w, y))

    assert _temp_bytes(unfused, 8192, d, v) > 64 * 2**20 + weight_bytes


def test_docstring_examples():
    import doctest

    import jaxsce
    from jaxsce import _linear, _vocab_parallel

    names = (
        "linear_softmax_cross_entropy",
        "vocab_parallel_softmax_cross_entropy",
        "vocab_parallel_linear_softmax_cross_entropy",
    )
    assert all(hasattr(jaxsce, name) for name in names)
    for module in (_linear, _vocab_parallel):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
