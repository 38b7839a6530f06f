"""Softmax cross-entropy: values, the fused gradient, residuals, transforms, bad input.

Three legs are compared: the fused custom_vjp (``fused=True``), JAX autodiff of
jaxsce's plain formulation (``fused=False``), and a textbook formulation
written here with ``jax.nn.log_softmax`` (plus optax as a peer).
"""

import jax
import jax.experimental.checkify
import jax.numpy as jnp
import jax.test_util
import numpy as np
import optax
import pytest

import jaxsce
from tests import _references
from tests._references import integer_ce_mp, ulp_error

INT = jaxsce.softmax_cross_entropy_with_integer_labels
SOFT = jaxsce.softmax_cross_entropy
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _logits(shape, dtype=jnp.float32, seed=0):
    return (2 * jax.random.normal(jax.random.PRNGKey(seed), shape)).astype(dtype)


def _labels(shape, num_classes, seed=1):
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, num_classes)


def _targets(shape, total=1.0, seed=2, dtype=jnp.float32):
    y = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(seed), shape))
    return (total * y).astype(dtype)


def _textbook(logits, y):
    """-sum y log softmax(z), differentiated by JAX: independent of jaxsce."""
    return -jnp.sum(y * jax.nn.log_softmax(logits), axis=-1)


# -- values ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (4, 7), (2, 3, 7)], ids=["one", "batch", "batch2"])
def test_integer_labels_match_optax(shape):
    z, y = _logits(shape), _labels(shape[:-1], shape[-1])
    np.testing.assert_allclose(
        INT(z, y), optax.softmax_cross_entropy_with_integer_labels(z, y), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("shape", [(7,), (4, 7), (2, 3, 7)], ids=["one", "batch", "batch2"])
def test_probabilities_match_optax(shape):
    z, y = _logits(shape), _targets(shape)
    np.testing.assert_allclose(SOFT(z, y), optax.softmax_cross_entropy(z, y), rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, (0, 2)], ids=["first", "middle", "tuple"])
def test_class_axis_matches_optax(axis):
    z = _logits((5, 6, 3))
    y = _targets((5, 6, 3))
    np.testing.assert_allclose(
        SOFT(z, y, axis=axis), optax.softmax_cross_entropy(z, y, axis=axis), rtol=1e-6
    )
    batch = tuple(d for i, d in enumerate(z.shape) if i not in np.atleast_1d(axis) % 3)
    c = int(np.prod(z.shape) // np.prod(batch))
    labels = _labels(batch, c)
    np.testing.assert_allclose(
        INT(z, labels, axis=axis),
        optax.softmax_cross_entropy_with_integer_labels(z, labels, axis=axis),
        rtol=1e-6,
    )


def test_where_matches_optax():
    z, y = _logits((4, 6)), _labels((4,), 4)
    where = jnp.broadcast_to(jnp.arange(6) < 4, (4, 6))
    np.testing.assert_allclose(
        INT(z, y, where=where),
        optax.softmax_cross_entropy_with_integer_labels(z, y, where=where),
        rtol=1e-6,
    )
    t = jnp.where(where, _targets((4, 6)), 0.0)
    np.testing.assert_allclose(
        SOFT(z, t, where=where), optax.softmax_cross_entropy(z, t, where=where), rtol=1e-6
    )


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_dtypes(dtype):
    z, y = _logits((4, 9), dtype), _labels((4,), 9)
    loss, grad = jax.value_and_grad(lambda z: jnp.sum(INT(z, y)))(z)
    assert loss.dtype == jnp.float32 and grad.dtype == dtype
    ref = optax.softmax_cross_entropy_with_integer_labels(z.astype(jnp.float32), y)
    np.testing.assert_allclose(loss, jnp.sum(ref), rtol=1e-6)
    ref_grad = jax.nn.softmax(z.astype(jnp.float32)) - jax.nn.one_hot(y, 9)
    np.testing.assert_allclose(grad.astype(jnp.float32), ref_grad, atol=1e-2)


# -- the fused gradient ----------------------------------------------------


def _three_legs(fn, z, y):
    fused = jax.grad(lambda z: jnp.sum(fn(z, y)))(z)
    autodiff = jax.grad(lambda z: jnp.sum(fn(z, y, fused=False)))(z)
    return fused, autodiff


@pytest.mark.parametrize("total", [1.0, 0.3, 2.5], ids=lambda t: f"sum{t}")
def test_gradient_is_p_sum_y_minus_y(x64, total):
    z = _logits((5, 8), jnp.float64)
    y = _targets((5, 8), total, dtype=jnp.float64)
    fused, autodiff = _three_legs(SOFT, z, y)
    textbook = jax.grad(lambda z: jnp.sum(_textbook(z, y)))(z)
    p = jax.nn.softmax(z)
    closed = p * jnp.sum(y, -1, keepdims=True) - y
    for g in (fused, autodiff, textbook):
        np.testing.assert_allclose(g, closed, atol=1e-14)
    if total != 1.0:  # the prover can fail: p - y is wrong when sum(y) != 1
        assert np.abs(fused - (p - y)).max() > 1e-3


def test_integer_gradient_is_p_minus_onehot(x64):
    z, y = _logits((6, 5), jnp.float64), _labels((6,), 5)
    fused, autodiff = _three_legs(INT, z, y)
    closed = jax.nn.softmax(z) - jax.nn.one_hot(y, 5, dtype=jnp.float64)
    np.testing.assert_allclose(fused, closed, atol=1e-15)
    np.testing.assert_allclose(autodiff, closed, atol=1e-15)
    assert np.abs(fused - jax.nn.softmax(z)).max() > 0.1  # a wrong formula is rejected


def test_gradient_with_respect_to_targets(x64):
    z, y = _logits((3, 6), jnp.float64), _targets((3, 6), 1.7, dtype=jnp.float64)
    g = jax.grad(lambda y: jnp.sum(SOFT(z, y)))(y)
    np.testing.assert_allclose(g, -jax.nn.log_softmax(z), atol=1e-14)
    g_auto = jax.grad(lambda y: jnp.sum(SOFT(z, y, fused=False)))(y)
    np.testing.assert_allclose(g_auto, -jax.nn.log_softmax(z), atol=1e-14)


@pytest.mark.parametrize("total", [1.0, 0.4])
def test_reverse_over_reverse_gives_the_hessian(x64, total):
    z = _logits((6,), jnp.float64)
    y = _targets((6,), total, dtype=jnp.float64)
    p = jax.nn.softmax(z)
    closed = total * (jnp.diag(p) - jnp.outer(p, p))
    h_rr = jax.jacrev(jax.jacrev(lambda z: SOFT(z, y)))(z)
    h_gg = jax.jacrev(jax.grad(lambda z: SOFT(z, y)))(z)
    h_fwd = jax.hessian(lambda z: SOFT(z, y, fused=False))(z)
    for h in (h_rr, h_gg, h_fwd):
        np.testing.assert_allclose(h, closed, atol=1e-14)
    assert np.abs(h_rr - jnp.diag(p) * total).max() > 1e-3  # without -p p^T: rejected
    labels = jnp.argmax(y)
    h_int = jax.jacrev(jax.jacrev(lambda z: INT(z, labels)))(z)
    np.testing.assert_allclose(h_int, jnp.diag(p) - jnp.outer(p, p), atol=1e-14)


@pytest.mark.parametrize("total", [1.0, 0.4])
def test_hessian_runs_through_the_fused_path(x64, total):
    """jax.hessian is forward over reverse: forward mode runs over the fused backward pass."""
    z = _logits((6,), jnp.float64)
    y = _targets((6,), total, dtype=jnp.float64)
    p = jax.nn.softmax(z)
    closed = total * (jnp.diag(p) - jnp.outer(p, p))
    h_fused = jax.hessian(lambda z: SOFT(z, y))(z)
    h_plain = jax.hessian(lambda z: SOFT(z, y, fused=False))(z)
    np.testing.assert_allclose(h_fused, h_plain, atol=1e-14)
    np.testing.assert_allclose(h_fused, closed, atol=1e-14)
    # Wrong closed forms are rejected: without -p p^T, and without the factor sum(y).
    assert np.abs(h_fused - total * jnp.diag(p)).max() > 1e-3
    if total != 1.0:
        assert np.abs(h_fused - closed / total).max() > 1e-3
    # A Hessian-vector product, forward over the fused reverse pass.
    v = _logits((6,), jnp.float64, seed=5)
    _, hvp = jax.jvp(jax.grad(lambda z: SOFT(z, y)), (z,), (v,))
    np.testing.assert_allclose(hvp, closed @ v, atol=1e-14)
    # Integer labels, and options: the same against the plain formulation.
    label = jnp.argmax(y)
    h_int = jax.hessian(lambda z: INT(z, label))(z)
    np.testing.assert_allclose(h_int, jnp.diag(p) - jnp.outer(p, p), atol=1e-14)
    opts = dict(label_smoothing=0.1, z_loss=1e-2)
    np.testing.assert_allclose(
        jax.hessian(lambda z: INT(z, label, **opts))(z),
        jax.hessian(lambda z: INT(z, label, fused=False, **opts))(z),
        atol=1e-14,
    )
    # Forward mode of the loss itself is what a custom_vjp refuses.
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jacfwd(lambda z: SOFT(z, y))(z)


def test_check_grads_second_order(x64):
    z, y = _logits((3, 5), jnp.float64), _targets((3, 5), 1.3, dtype=jnp.float64)
    with jax.numpy_dtype_promotion("standard"):  # check_grads mixes dtypes itself
        jax.test_util.check_grads(lambda z: SOFT(z, y), (z,), order=2, modes=["rev"])
        jax.test_util.check_grads(lambda y: SOFT(z, y), (y,), order=2, modes=["rev"])


def test_forward_mode_needs_the_plain_formulation():
    z, y = _logits((5,)), _labels((), 5)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda z: INT(z, y), (z,), (z,))
    _, tangent = jax.jvp(lambda z: INT(z, y, fused=False), (z,), (z,))
    grad = jax.grad(lambda z: INT(z, y))(z)
    np.testing.assert_allclose(tangent, jnp.dot(grad, z), rtol=1e-5)


# -- residuals -------------------------------------------------------------


def _big_leaves(fn, *args):
    _, vjp_fn = jax.vjp(fn, *args)
    size = args[0].size
    leaves = [x for x in jax.tree_util.tree_leaves(vjp_fn) if hasattr(x, "shape")]
    return [x for x in leaves if x.size >= size], [x for x in leaves if x.size < size]


def test_residuals_integer_labels():
    n, c = 16, 1000
    z, y = _logits((n, c)), _labels((n,), c)
    big, small = _big_leaves(lambda z: INT(z, y), z)
    assert len(big) == 1 and big[0].shape == (n, c)
    np.testing.assert_array_equal(big[0], z)  # the logits themselves, nothing new
    assert sum(x.size for x in small) <= 8 * n
    # The count can fail: a function that keeps two logits-size arrays.
    big_two, _ = _big_leaves(lambda z: jnp.sum(jnp.sin(z) * jnp.exp(z), -1), z)
    assert len(big_two) >= 2


def test_residuals_probabilities():
    n, c = 16, 1000
    z, y = _logits((n, c)), _targets((n, c))
    big, small = _big_leaves(lambda z: SOFT(z, y), z)
    # The logits and the targets, both the caller's own arrays; nothing computed.
    assert len(big) == 2
    np.testing.assert_array_equal(big[0], z)
    np.testing.assert_array_equal(big[1], y)
    assert sum(x.size for x in small) <= 8 * n


def _step_temp_bytes(loss, z, y):
    """XLA's temporary bytes for ``value_and_grad`` of the mean loss."""
    f = lambda z: jnp.mean(loss(z, y).astype(jnp.float32))  # noqa: E731
    compiled = jax.jit(jax.value_and_grad(f)).lower(z).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_bfloat16_step_holds_no_float32_copy_of_the_logits():
    """bfloat16 logits: forward + backward temp within 1.1x of the float32 program's."""
    n, c = 512, 8192
    z, y = _logits((n, c)), _labels((n,), c)
    temp32 = _step_temp_bytes(INT, z, y)
    temp16 = _step_temp_bytes(INT, z.astype(jnp.bfloat16), y)
    assert temp32 < n * c  # neither holds an array of the logits' size ...
    assert temp16 <= 1.1 * temp32
    # ... which the measure sees: a loss that upcasts the logits to a float32 copy.
    upcast = lambda z, y: INT(z.astype(jnp.float32) * 1.5, y)  # noqa: E731
    assert _step_temp_bytes(upcast, z.astype(jnp.bfloat16), y) >= 4 * n * c


@pytest.mark.parametrize("shape", [(4096, 100), (512, 8192)])
def test_bfloat16_forward_holds_no_float32_copy_of_the_logits(shape):
    """bfloat16 logits, value only: temp below a quarter of a float32 copy (4 n c bytes)."""
    z, y = _logits(shape).astype(jnp.bfloat16), _labels(shape[:1], shape[1])

    def temp(loss):
        f = lambda z: jnp.mean(loss(z, y).astype(jnp.float32))  # noqa: E731
        return jax.jit(f).lower(z).compile().memory_analysis().temp_size_in_bytes

    assert temp(INT) < z.size
    upcast = lambda z, y: INT(z.astype(jnp.float32) * 1.5, y)  # noqa: E731
    assert temp(upcast) >= 4 * z.size


# -- transforms ------------------------------------------------------------


@pytest.mark.parametrize("fn", ["int", "soft"])
def test_vmap_of_one_example_equals_the_batch(fn):
    z = _logits((3, 4, 6))
    y = _labels((3, 4), 6) if fn == "int" else _targets((3, 4, 6))
    f = INT if fn == "int" else SOFT
    np.testing.assert_allclose(jax.vmap(jax.vmap(f))(z, y), f(z, y), rtol=1e-6)
    g1 = jax.vmap(jax.vmap(jax.grad(f)))(z, y)
    g2 = jax.grad(lambda z: jnp.sum(f(z, y)))(z)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", ["int", "soft"])
def test_jit_composes(fn):
    z = _logits((3, 6))
    y = _labels((3,), 6) if fn == "int" else _targets((3, 6))
    f = INT if fn == "int" else SOFT
    np.testing.assert_allclose(jax.jit(f)(z, y), f(z, y), rtol=1e-6)


# -- edge cases and bad input -------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_labels_past_two_to_the_24_are_told_apart(dtype):
    """2^24 + 4 classes: the label and its neighbour are different classes.

    Two classes of logit 0, every other one ``-inf``: the loss is ``log 2``
    and the gradient ``-1/2``, ``+1/2``. A float32 class index rounds
    2^24 + 1 to 2^24 and leaves both out of the sum (loss 0).
    """
    num_classes, label = 2**24 + 4, 2**24 + 1
    z = np.full((1, num_classes), -np.inf, np.float32)
    z[0, label - 1 : label + 1] = 0.0
    z, y = jnp.asarray(z, dtype), jnp.array([label])
    loss, grad = jax.value_and_grad(lambda z: jnp.sum(INT(z, y)))(z)
    np.testing.assert_allclose(INT(z, y)[0], np.log(2.0), rtol=1e-6)  # forward alone
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(grad[0, label - 1 : label + 1].astype(jnp.float32), [0.5, -0.5])
    assert float(np.float32(label)) != label  # the rounding that the index must avoid


def test_out_of_range_labels_give_nan_not_a_wrap():
    z = _logits((4, 5))
    y = jnp.array([0, -1, 5, 2])
    loss = INT(z, y)
    grad = jax.grad(lambda z: jnp.sum(INT(z, y)))(z)
    assert np.isnan(loss[1]) and np.isnan(loss[2]) and np.isfinite(loss[0]) and np.isfinite(loss[3])
    assert np.all(np.isnan(grad[1])) and np.all(np.isnan(grad[2]))
    assert np.all(np.isfinite(grad[0])) and np.all(np.isfinite(grad[3]))
    # optax wraps -1 to the last class and returns a finite number:
    assert np.isfinite(optax.softmax_cross_entropy_with_integer_labels(z, y)[1])


def test_check_labels_raises_with_the_value_and_index():
    jaxsce.check_labels(jnp.array([[0, 1], [4, 2]]), 5)
    with pytest.raises(Exception, match=r"label 7 at index \[1 0\] is outside \[0, 5\)"):
        jaxsce.check_labels(jnp.array([[0, 1], [7, 2]]), 5)
    jaxsce.check_labels(jnp.array([0, -100]), 5, ignore_index=-100)
    checked = jax.experimental.checkify.checkify(jax.jit(lambda y: jaxsce.check_labels(y, 3)))
    err, _ = checked(jnp.array([1, -1]))
    with pytest.raises(Exception, match="label -1 at index"):
        err.throw()


def test_neg_inf_logits():
    z = jnp.array([[0.0, -jnp.inf, 1.0], [0.0, -jnp.inf, 1.0], [-jnp.inf] * 3])
    y = jnp.array([0, 1, 0])
    loss = INT(z, y)
    grad = jax.grad(lambda z: jnp.sum(INT(z, y)))(z)
    assert np.isfinite(loss[0]) and grad[0, 1] == 0 and np.all(np.isfinite(grad[0]))
    assert loss[1] == np.inf  # the label's class is impossible
    assert loss[2] == np.inf and np.all(grad[2] == 0)  # no valid class at all
    assert not np.any(np.isnan(grad))


def test_label_on_a_masked_class_is_inf():
    z = _logits((2, 4))
    where = jnp.array([[True, True, False, True]])  # (1, C): a class mask
    loss = INT(z, jnp.array([2, 0]), where=where)
    assert loss[0] == np.inf and np.isfinite(loss[1])
    soft = SOFT(z, jax.nn.one_hot(jnp.array([2, 0]), 4), where=where)
    assert soft[0] == np.inf and np.isfinite(soft[1])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_posinf_come_out(bad):
    z = jnp.array([0.0, bad, 1.0])
    for label in (0, 1):
        assert np.isnan(INT(z, jnp.array(label)))
        assert np.all(np.isnan(jax.grad(INT)(z, jnp.array(label))))
    assert np.isnan(SOFT(z, jnp.array([0.2, 0.3, 0.5])))


def test_empty_batch():
    z, y = jnp.zeros((0, 5)), jnp.zeros((0,), jnp.int32)
    assert INT(z, y).shape == (0,)
    assert INT(z, y, reduction="sum") == 0 and INT(z, y, reduction="mean") == 0
    assert jax.grad(lambda z: INT(z, y, reduction="mean"))(z).shape == (0, 5)


def test_bad_shapes_and_dtypes():
    z = jnp.zeros((4, 5))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4,\).*\(3,\)"):
        INT(z, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4\)"):
        SOFT(z, jnp.zeros((4, 4)))
    with pytest.raises(TypeError, match="integer class indices"):
        INT(z, jnp.zeros((4,)))
    with pytest.raises(TypeError, match="floating-point probabilities"):
        SOFT(z, jnp.zeros((4, 5), jnp.int32))
    with pytest.raises(TypeError, match="`logits` must be a floating-point"):
        INT(jnp.zeros((4, 5), jnp.int32), jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="no classes"):
        INT(jnp.zeros((4, 0)), jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="does not broadcast"):
        INT(z, jnp.zeros((4,), jnp.int32), where=jnp.ones((3,), bool))


# -- the accuracy range and its reference (issue 14 item 11) ------------------------


def _margin_rows(num_classes, margins, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.uniform(-12, 0, (len(margins), num_classes)).astype(np.float32)
    labels = rng.integers(num_classes, size=len(margins))
    for row, margin in enumerate(margins):
        z[row, labels[row]] = np.float32(z[row].max() + margin)
    return z, labels


def test_accuracy_range_stated_in_readme():
    """Within 4 ulp up to label margin 70 at 1000 classes (a loss down to ~1e-29)."""
    margins = (50.0, 60.0, 70.0)
    z, y = _margin_rows(1000, margins)
    refs = [integer_ce_mp(zi, int(yi)) for zi, yi in zip(z, y)]
    loss_ref, grad_ref = np.array([r[0] for r in refs]), np.stack([r[1] for r in refs])
    assert loss_ref.min() < 1e-28
    step = jax.jit(jax.vmap(jax.value_and_grad(INT)))
    loss, grad = step(z, y)
    assert ulp_error(loss, loss_ref).max() <= 4
    assert ulp_error(grad, grad_ref).max() <= 4


def test_reference_has_enough_digits(monkeypatch):
    """At 34 digits ``log(1 + r)`` keeps only a few digits of ``r ~ e^-70``; 120 keep all."""
    z, y = _margin_rows(1000, (70.0,), seed=1)
    fine = integer_ce_mp(z[0], int(y[0]))[0]
    monkeypatch.setattr(_references, "DPS", 200)
    finer = integer_ce_mp(z[0], int(y[0]))[0]
    monkeypatch.setattr(_references, "DPS", 34)
    coarse = integer_ce_mp(z[0], int(y[0]))[0]
    assert ulp_error(fine, finer) <= 0.01
    assert ulp_error(coarse, finer) > 4  # a 34-digit reference would flag a false error
