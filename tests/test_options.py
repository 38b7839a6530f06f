"""Loss options through the fused gradient: fused vs autodiff vs a textbook reference.

The textbook reference writes the effective targets out densely and takes
``-sum y log_softmax(z)`` with ``jax.nn``; it shares no code with jaxsce.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.experimental import checkify

import jaxsce

INT = jaxsce.softmax_cross_entropy_with_integer_labels
SOFT = jaxsce.softmax_cross_entropy


def _textbook(
    z,
    labels,
    *,
    soft,
    where,
    class_weights,
    ignore_index,
    sample_weights,
    reduction,
    label_smoothing,
    smoothing,
    z_loss,
):
    c = z.shape[-1]
    valid = jnp.ones(z.shape, bool) if where is None else where
    n_valid = jnp.sum(valid, -1, keepdims=True).astype(z.dtype)
    w = jnp.ones(c, z.dtype) if class_weights is None else class_weights
    w_row = jnp.broadcast_to(w, z.shape)
    valid_f = valid.astype(z.dtype)
    eps = label_smoothing
    keep = jnp.ones(z.shape[:-1], bool)
    const = 0.0
    if soft:
        y = labels
        if eps:
            y = (1 - eps) * y + eps / n_valid * valid_f
        y = y * w_row
        denom_w = jnp.ones(z.shape[:-1], z.dtype)
    else:
        if ignore_index is not None:
            keep = labels != ignore_index
        lab = jnp.where(keep, labels, 0)
        onehot = jax.nn.one_hot(lab, c, dtype=z.dtype)
        if smoothing == "t5x" and eps:
            low = eps / (n_valid - 1)
            y = onehot * (1 - eps) + (1 - onehot) * low * valid_f
            const = (
                -(
                    (1 - eps) * jnp.log(1 - eps)
                    + (n_valid[..., 0] - 1) * low[..., 0] * jnp.log(low[..., 0])
                )
                if eps < 1
                else 0.0
            )
        else:
            y = (1 - eps) * onehot * w_row + eps / n_valid * valid_f * w_row
        denom_w = w[lab]
    lp = jax.nn.log_softmax(z, where=valid)
    lp = jnp.where(valid, lp, 0.0)  # masked classes carry no target mass
    loss = -jnp.sum(jnp.where(y == 0, 0.0, y * lp), -1) - const
    if z_loss:
        loss = loss + z_loss * jax.nn.logsumexp(z, axis=-1, where=valid) ** 2
    sw = jnp.ones(loss.shape, z.dtype) if sample_weights is None else sample_weights
    loss = jnp.where(keep, loss, 0.0) * sw
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    return jnp.sum(loss) / jnp.sum(jnp.where(keep, denom_w * sw, 0.0))


options = st.fixed_dictionaries(
    {
        "soft": st.booleans(),
        "masked": st.booleans(),
        "class_weights": st.booleans(),
        "ignore": st.booleans(),
        "sample_weights": st.booleans(),
        "reduction": st.sampled_from(["none", "sum", "mean"]),
        "label_smoothing": st.sampled_from([0.0, 0.1, 0.5]),
        "smoothing": st.sampled_from(["torch", "t5x"]),
        "z_loss": st.sampled_from([0.0, 1e-2]),
        "axis": st.sampled_from([-1, 0]),
        "dtype": st.sampled_from(["float64", "float32"]),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=12, deadline=None)
@given(opt=options)
def test_fused_autodiff_and_textbook_agree(opt):
    with jax.enable_x64(True):
        _agree(opt)


def _agree(opt):
    n, c = 5, 6
    key = jax.random.PRNGKey(opt["seed"])
    k1, k2, k3, k4 = jax.random.split(key, 4)
    dtype = jnp.dtype(opt["dtype"])
    z = 3 * jax.random.normal(k1, (n, c), jnp.float64)
    where = None
    if opt["masked"]:
        where = jnp.broadcast_to(jnp.arange(c) < c - 2, (n, c))
    c_valid = c - 2 if opt["masked"] else c
    soft = opt["soft"]
    if soft:
        labels = jax.nn.softmax(jax.random.normal(k2, (n, c), jnp.float64), where=where)
        labels = jnp.where(where, labels, 0.0) if where is not None else labels
        opt["smoothing"] = "torch"
    else:
        labels = jax.random.randint(k2, (n,), 0, c_valid)
        if opt["ignore"]:
            labels = labels.at[1].set(-100)
    if opt["smoothing"] == "t5x":
        opt["class_weights"] = False
    kw = dict(
        where=where,
        class_weights=jax.random.uniform(k3, (c,), jnp.float64) + 0.5
        if opt["class_weights"]
        else None,
        sample_weights=jax.random.uniform(k4, (n,), jnp.float64) if opt["sample_weights"] else None,
        reduction=opt["reduction"],
        label_smoothing=opt["label_smoothing"],
        z_loss=opt["z_loss"],
    )
    if not soft:
        kw.update(ignore_index=-100 if opt["ignore"] else None, smoothing=opt["smoothing"])
    fn = SOFT if soft else INT

    def ours(z, fused):
        # axis=0: the same problem with the class axis first.
        if opt["axis"] == 0:
            w = kw["where"]
            lab = labels.T if soft else labels
            args = {**kw, "where": None if w is None else w.T}
            return jnp.sum(fn(z.T, lab, axis=0, fused=fused, **args))
        return jnp.sum(fn(z, labels, fused=fused, **kw))

    ref_kw = {k: v for k, v in kw.items()}
    ref_kw.setdefault("ignore_index", None)
    ref_kw.setdefault("smoothing", "torch")

    def reference(z):
        return jnp.sum(_textbook(z, labels, soft=soft, **ref_kw))

    # float32 runs take float32 logits; the reference stays float64.
    zd = z.astype(dtype)
    v_f, g_f = jax.value_and_grad(lambda z: ours(z, True))(zd)
    v_a, g_a = jax.value_and_grad(lambda z: ours(z, False))(zd)
    v_r, g_r = jax.value_and_grad(reference)(zd.astype(jnp.float64))
    assert g_f.dtype == dtype and g_a.dtype == dtype
    tol = {"float64": (1e-12, 1e-10), "float32": (2e-6, 2e-5)}[opt["dtype"]]
    np.testing.assert_allclose(v_f, v_r, rtol=tol[0], atol=tol[0])
    np.testing.assert_allclose(v_a, v_r, rtol=tol[0], atol=tol[0])
    np.testing.assert_allclose(g_f, g_r, rtol=tol[1], atol=tol[0])
    np.testing.assert_allclose(g_a, g_r, rtol=tol[1], atol=tol[0])


def test_z_loss_gradient_and_aux_are_differentiable(x64):
    z = 2 * jax.random.normal(jax.random.PRNGKey(0), (3, 5), jnp.float64)
    y = jnp.array([0, 2, 4])
    zeta = 0.1
    g = jax.grad(lambda z: jnp.sum(INT(z, y, z_loss=zeta)))(z)
    p, lse = jax.nn.softmax(z), jax.nn.logsumexp(z, axis=-1, keepdims=True)
    closed = p * (1 + 2 * zeta * lse) - jax.nn.one_hot(y, 5, dtype=jnp.float64)
    np.testing.assert_allclose(g, closed, atol=1e-14)
    assert np.abs(g - (p - jax.nn.one_hot(y, 5, dtype=jnp.float64))).max() > 1e-2
    # Every returned value has its true gradient (T5X's z_loss output has none).
    g_aux = jax.grad(lambda z: jnp.sum(INT(z, y, z_loss=zeta, return_aux=True)[1].z_loss))(z)
    np.testing.assert_allclose(g_aux, 2 * zeta * lse * p, atol=1e-14)
    g_lse = jax.grad(lambda z: jnp.sum(INT(z, y, return_aux=True)[1].logsumexp))(z)
    np.testing.assert_allclose(g_lse, p, atol=1e-14)


def test_aux_outputs():
    z = jnp.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    y = jnp.array([0, 0, 1, -100])
    loss, aux = INT(z, y, ignore_index=-100, z_loss=1e-3, reduction="mean", return_aux=True)
    np.testing.assert_array_equal(aux.correct, [True, False, True, False])
    assert aux.num_counted == 3 and aux.denominator == 3
    np.testing.assert_allclose(aux.logsumexp, jax.nn.logsumexp(z, axis=-1), rtol=1e-6)
    np.testing.assert_allclose(
        aux.z_loss[:3], 1e-3 * jax.nn.logsumexp(z, axis=-1)[:3] ** 2, rtol=1e-6
    )
    assert aux.z_loss[3] == 0


def test_t5x_perfect_prediction_scores_zero(x64):
    eps, c = 0.1, 5
    target = jnp.full(c, eps / (c - 1), jnp.float64).at[2].set(1 - eps)
    loss = INT(jnp.log(target), jnp.array(2), label_smoothing=eps, smoothing="t5x")
    assert abs(loss) < 1e-14
    torch_style = INT(jnp.log(target), jnp.array(2), label_smoothing=eps)
    assert torch_style > 0.1  # the other convention does not subtract the entropy


def test_ignore_index_gives_zero_loss_and_gradient():
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    y = jnp.array([1, -100, 3, -100])
    loss = INT(z, y, ignore_index=-100, z_loss=0.1, label_smoothing=0.2)
    assert loss[1] == 0 and loss[3] == 0 and loss[0] > 0
    g = jax.grad(lambda z: jnp.sum(INT(z, y, ignore_index=-100, z_loss=0.1)))(z)
    assert np.all(g[1] == 0) and np.all(g[3] == 0) and np.any(g[0] != 0)
    assert np.isnan(INT(z, y)[1])  # without ignore_index, -100 is a bad label: NaN


def test_all_ignored_mean_is_zero():
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    y = jnp.full((3,), -100)
    loss, g = jax.value_and_grad(lambda z: INT(z, y, ignore_index=-100, reduction="mean"))(z)
    assert loss == 0 and np.all(g == 0)


def test_normalizer_makes_gradient_accumulation_exact(x64):
    z = jax.random.normal(jax.random.PRNGKey(0), (8, 5), jnp.float64)
    y = jnp.array([0, 1, -100, 3, 4, -100, 2, 1])
    full = jax.grad(lambda z: INT(z, y, ignore_index=-100, reduction="mean"))(z)
    count = jnp.sum(y != -100).astype(jnp.float64)
    parts = [
        jax.grad(lambda z: INT(z, y[s], ignore_index=-100, reduction="mean", normalizer=count))(
            z[s]
        )
        for s in (slice(0, 3), slice(3, 8))
    ]
    np.testing.assert_allclose(jnp.concatenate(parts), full, atol=1e-15)
    per_part_mean = [
        jax.grad(lambda z: INT(z, y[s], ignore_index=-100, reduction="mean"))(z[s])
        for s in (slice(0, 3), slice(3, 8))
    ]
    assert np.abs(jnp.concatenate(per_part_mean) - full).max() > 1e-3


def test_options_keep_one_logits_size_residual():
    n, c = 8, 512
    z = jax.random.normal(jax.random.PRNGKey(0), (n, c))
    y = jnp.arange(n)
    w = jnp.linspace(0.5, 2.0, c)

    def f(z):
        return INT(
            z,
            y,
            class_weights=w,
            label_smoothing=0.1,
            z_loss=1e-3,
            ignore_index=3,
            sample_weights=jnp.ones(n),
            reduction="mean",
            where=jnp.ones((n, c), bool),
        )

    _, vjp_fn = jax.vjp(f, z)
    leaves = [x for x in jax.tree_util.tree_leaves(vjp_fn) if hasattr(x, "size")]
    big = [x for x in leaves if x.size >= n * c and x.dtype != jnp.bool_]
    assert len(big) == 1  # the logits (the boolean mask is the caller's own)


def test_confident_accuracy_holds_with_options():
    """A confident prediction keeps its tiny loss with weights and ignore_index on."""
    z = jnp.zeros((2, 1000)).at[0, 3].set(20.0).at[1, 5].set(30.0)
    y = jnp.array([3, 5])
    w = jnp.full((1000,), 2.0)
    loss = INT(z, y, class_weights=w, ignore_index=-100, sample_weights=jnp.ones(2))
    want = 2 * np.log1p(999 * np.exp(-np.array([20.0, 30.0])))
    np.testing.assert_allclose(loss, want, rtol=4e-7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_smoothing": 1.5}, "label_smoothing.*1.5"),
        ({"label_smoothing": -0.1}, "label_smoothing.*-0.1"),
        ({"class_weights": jnp.ones(3)}, r"class_weights.*\(5,\).*\(3,\)"),
        ({"class_weights": -jnp.ones(5)}, "class_weights.*non-negative"),
        ({"reduction": "avg"}, "reduction.*'avg'"),
        ({"reduction": "mean", "normalizer": 0.0}, "normalizer.*0.0"),
        ({"reduction": "mean", "normalizer": -2}, "normalizer.*-2"),
        ({"normalizer": 4.0}, "normalizer.*reduction='none'"),
        ({"z_loss": -1.0}, "z_loss.*-1.0"),
        ({"smoothing": "jax"}, "smoothing.*'jax'"),
        ({"sample_weights": jnp.ones(3)}, "sample_weights.*batch shape"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        INT(jnp.zeros((4, 5)), jnp.zeros((4,), jnp.int32), **kwargs)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_gradient_with_respect_to_class_weights(x64, smoothing):
    """Class weights are differentiable too: fused against autodiff and the textbook."""
    z = 2 * jax.random.normal(jax.random.PRNGKey(0), (4, 5), jnp.float64)
    y = jnp.array([0, 3, 4, 1])
    where = jnp.broadcast_to(jnp.arange(5) < 4, (4, 5)).at[2].set(True)
    kw = dict(where=where, label_smoothing=smoothing, reduction="mean", z_loss=1e-2)

    def ours(w, fused):
        return INT(z, y, class_weights=w, fused=fused, **kw)

    def reference(w):
        return _textbook(
            z,
            y,
            soft=False,
            class_weights=w,
            ignore_index=None,
            sample_weights=None,
            smoothing="torch",
            **kw,
        )

    w = jnp.linspace(0.5, 2.0, 5, dtype=jnp.float64)
    g_ref = jax.grad(reference)(w)
    np.testing.assert_allclose(jax.grad(lambda w: ours(w, True))(w), g_ref, atol=1e-14)
    np.testing.assert_allclose(jax.grad(lambda w: ours(w, False))(w), g_ref, atol=1e-14)
    assert np.abs(g_ref).max() > 1e-3


# -- label dtypes (issue 14 item 2) ------------------------------------------------

INT_DTYPES = ["int8", "int16", "int32", "uint8", "uint16", "uint32"]


def _lse_minus_label(z, labels):
    """float64 textbook ``lse(z) - z_y`` with NumPy (no jaxsce, no wrap: int64 labels)."""
    labels = np.asarray(labels, np.int64)
    z = np.asarray(z, np.float64).reshape(-1, np.shape(z)[-1])
    m = z.max(-1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(-1))
    return (lse - z[np.arange(len(z)), labels.ravel()]).reshape(labels.shape)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autodiff"])
def test_every_label_dtype_with_classes_beyond_its_range(dtype, fused):
    """C = 256 (and 32768 for 16 bits): the largest label the dtype holds is a valid class."""
    info = np.iinfo(dtype)
    c = 32768 if info.bits == 16 else 256
    top = min(int(info.max), c - 1)
    labels = np.array([top, 0, top // 2 + 28, 3], dtype)
    z = jax.random.normal(jax.random.PRNGKey(0), (4, c))
    want = _lse_minus_label(z, labels)
    loss = INT(z, jnp.asarray(labels), fused=fused)
    np.testing.assert_allclose(loss, want, rtol=2e-6)
    g = jax.grad(lambda z: jnp.sum(INT(z, jnp.asarray(labels), fused=fused)))(z)
    onehot = np.zeros((4, c), np.float32)
    onehot[np.arange(4), labels.astype(np.int64)] = 1
    np.testing.assert_allclose(g, jax.nn.softmax(z) - onehot, atol=1e-6)
    jaxsce.check_labels(jnp.asarray(labels), c)  # valid labels pass


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_negative_ignore_index_never_matches_an_unsigned_label(dtype):
    # -100 wraps to 156 in uint8 (65436 in uint16): that class must not be ignored.
    wrapped = int(np.array(-100).astype(dtype))
    c = wrapped + 1
    labels = jnp.array([wrapped, 1], dtype)
    z = jax.random.normal(jax.random.PRNGKey(1), (2, c))
    loss = INT(z, labels, ignore_index=-100)
    np.testing.assert_allclose(loss, _lse_minus_label(z, np.array([wrapped, 1])), rtol=2e-6)
    assert INT(z, labels, ignore_index=-100, reduction="mean", return_aux=True)[1].num_counted == 2
    jaxsce.check_labels(labels, c, ignore_index=-100)
    with pytest.raises(Exception, match="outside"):
        jaxsce.check_labels(labels, wrapped, ignore_index=-100)


def test_labels_beyond_int32_are_out_of_range_not_another_class():
    z = jax.random.normal(jax.random.PRNGKey(2), (3, 10))
    labels = jnp.array([2**31 + 3, 2**32 - 1, 3], jnp.uint32)  # int32 casts: 3 and -1
    loss = INT(z, labels)
    assert np.isnan(loss[0]) and np.isnan(loss[1]) and np.isfinite(loss[2])
    # -100 as uint32 is 2**32 - 100: out of range, not ignored.
    loss = INT(z[:2], jnp.array([2**32 - 100, 3], jnp.uint32), ignore_index=-100)
    assert np.isnan(loss[0]) and np.isfinite(loss[1])
    with pytest.raises(Exception, match="outside"):
        jaxsce.check_labels(labels, 10)


def test_int64_labels_beyond_int32(x64):
    z = jax.random.normal(jax.random.PRNGKey(2), (2, 10), jnp.float64)
    labels = jnp.array([2**32 + 3, 3], jnp.int64)
    loss = INT(z, labels)
    assert np.isnan(loss[0]) and np.isfinite(loss[1])


def test_check_labels_in_narrow_dtypes():
    jaxsce.check_labels(jnp.array([0, 127, -100], jnp.int8), 300, ignore_index=-100)
    jaxsce.check_labels(jnp.array([0, 255], jnp.uint8), 256)
    with pytest.raises(Exception, match="label -3 at index"):
        jaxsce.check_labels(jnp.array([0, -3], jnp.int8), 300)
    with pytest.raises(Exception, match="label 200 at index"):
        jaxsce.check_labels(jnp.array([0, 200], jnp.uint8), 200)


# -- zero targets and masked classes: dL/dy (issue 14 items 5 and 10) ----------------


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autodiff"])
def test_target_gradient_at_zero_targets_is_lse_minus_z(x64, fused):
    z = 2 * jax.random.normal(jax.random.PRNGKey(0), (3, 5), jnp.float64)
    y = jax.nn.one_hot(jnp.array([1, 3, 0]), 5, dtype=jnp.float64)  # mostly zeros
    g = jax.grad(lambda y: jnp.sum(SOFT(z, y, fused=fused)))(y)
    want = jax.nn.logsumexp(z, axis=-1, keepdims=True) - z
    np.testing.assert_allclose(g, want, rtol=1e-14)
    assert np.all(np.abs(want) > 1e-3)  # so a gradient of 0 at y = 0 is rejected


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autodiff"])
def test_masked_classes_carry_no_target_gradient(x64, fused):
    z = 2 * jax.random.normal(jax.random.PRNGKey(0), (3, 5), jnp.float64)
    zt = jax.random.normal(jax.random.PRNGKey(1), (3, 5), jnp.float64)
    m = jnp.array([[True, False, True, True, False]])
    valid = np.broadcast_to(np.asarray(m), (3, 5))
    y = jaxsce.softmax(zt, where=m)
    g = jax.grad(lambda y: jnp.sum(SOFT(z, y, where=m, fused=fused)))(y)
    lse = jax.nn.logsumexp(z, axis=-1, where=m, keepdims=True)
    np.testing.assert_allclose(np.where(valid, g, 0.0), np.where(valid, lse - z, 0.0))
    assert np.all(g[~valid] == 0)

    # The teacher's gradient through jaxsce.softmax, against jax.nn.softmax and
    # a masked textbook loss that JAX differentiates.
    def textbook(zt):
        yt = jax.nn.softmax(zt, where=m)
        return jnp.sum(-jnp.sum(jnp.where(m, yt * jax.nn.log_softmax(z, where=m), 0.0), -1))

    g_t = jax.grad(lambda zt: jnp.sum(SOFT(z, jaxsce.softmax(zt, where=m), where=m, fused=fused)))
    np.testing.assert_allclose(g_t(zt), jax.grad(textbook)(zt), atol=1e-14)
    assert np.all(np.isfinite(g_t(zt)))
    # d/d class_weights: finite, 0 on the masked classes.
    w = jnp.linspace(0.5, 2.0, 5, dtype=jnp.float64)
    g_w = jax.grad(lambda w: jnp.sum(SOFT(z, y, where=m, class_weights=w, fused=fused)))(w)
    want_w = np.sum(np.where(valid, y * (lse - z), 0.0), 0)
    np.testing.assert_allclose(g_w, want_w, rtol=1e-13)
    assert g_w[1] == 0 and g_w[4] == 0


# -- axis (issue 14 item 6, 11; issue 13 item 3) ------------------------------------


@pytest.mark.parametrize("axis", [(2, 0), (0, 2), (1, 2, 0), [2, 0]], ids=str)
def test_tuple_axis_keeps_its_order_as_optax(axis):
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
    batch = [d for i, d in enumerate(z.shape) if i not in axis]
    c = int(np.prod([z.shape[a] for a in axis]))
    labels = jax.random.randint(jax.random.PRNGKey(1), tuple(batch), 0, c)
    want = optax.softmax_cross_entropy_with_integer_labels(z, labels, axis=tuple(axis))
    np.testing.assert_allclose(INT(z, labels, axis=axis), want, rtol=1e-6)
    # textbook: move the axes to the end in the given order, flatten
    moved = jnp.moveaxis(z, tuple(axis), tuple(range(3 - len(axis), 3))).reshape(*batch, c)
    np.testing.assert_allclose(
        INT(z, labels, axis=axis), _lse_minus_label(moved, labels), rtol=1e-6
    )
    if tuple(axis) == (2, 0):  # the sorted order means something else
        assert np.abs(INT(z, labels, axis=(0, 2)) - want).max() > 1e-2


def test_axis_none_reduces_over_everything_as_optax_and_jax_nn():
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
    y = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (3, 4, 5)), axis=None)
    np.testing.assert_allclose(
        SOFT(z, y, axis=None), optax.softmax_cross_entropy(z, y, axis=None), rtol=1e-6
    )
    label = jnp.array(37)
    np.testing.assert_allclose(
        INT(z, label, axis=None), jax.nn.logsumexp(z, axis=None) - z.ravel()[37], rtol=1e-6
    )
    np.testing.assert_allclose(
        jaxsce.logsumexp(z, axis=None), jax.nn.logsumexp(z, axis=None), rtol=1e-6
    )
    np.testing.assert_allclose(
        jaxsce.softmax(z, axis=None), jax.nn.softmax(z, axis=None), atol=1e-7
    )
    np.testing.assert_allclose(
        jaxsce.log_softmax(z, axis=None), jax.nn.log_softmax(z, axis=None), atol=1e-6
    )


def test_every_axis_form_the_peers_accept():
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
    for axis in ([0, 1], np.int64(-1), (np.int32(1),), np.array([0, 1])):
        ref = jax.nn.logsumexp(z, axis=tuple(np.atleast_1d(axis).tolist()))
        np.testing.assert_allclose(jaxsce.logsumexp(z, axis=axis), ref, rtol=1e-6)
        np.testing.assert_allclose(
            jaxsce.softmax(z, axis=axis),
            jax.nn.softmax(z, axis=tuple(np.atleast_1d(axis))),
            atol=1e-7,
        )
    labels = jnp.zeros((5,), jnp.int32)
    np.testing.assert_allclose(INT(z, labels, axis=[0, 1]), INT(z, labels, axis=(0, 1)), rtol=0)
    np.testing.assert_allclose(
        INT(z, jnp.zeros((3, 4), jnp.int32), axis=np.int64(-1)),
        INT(z, jnp.zeros((3, 4), jnp.int32)),
        rtol=0,
    )
    with pytest.raises(ValueError, match="softmax_cross_entropy_with_integer_labels.*out of range"):
        INT(z, labels, axis=3)
    with pytest.raises(TypeError, match="logsumexp: `axis` must be an int, a sequence"):
        jaxsce.logsumexp(z, axis="x")


def test_zero_size_class_axis_matches_jax_nn():
    x = jnp.zeros((3, 0))
    np.testing.assert_array_equal(jaxsce.logsumexp(x), jax.nn.logsumexp(x, axis=-1))
    assert jaxsce.softmax(x).shape == (3, 0) and jaxsce.log_softmax(x).shape == (3, 0)
    with pytest.raises(ValueError, match="softmax_cross_entropy_with_integer_labels.*no classes"):
        INT(x, jnp.zeros((3,), jnp.int32))


# -- optax's per-example `where` (issue 14 item 7) -------------------------------------


@pytest.mark.parametrize("fn", ["int", "soft"])
def test_batch_shaped_where_is_a_per_example_mask_as_optax(fn):
    n = c = 4  # N == C: the case a class-mask reading gets wrong
    z = jax.random.normal(jax.random.PRNGKey(3), (n, c))
    labels = jnp.array([0, 1, 2, 3])
    y = labels if fn == "int" else jax.nn.one_hot(labels, c)
    keep = jnp.array([True, False, True, True])
    ours = (INT if fn == "int" else SOFT)(z, y, where=keep)
    theirs = (
        optax.softmax_cross_entropy_with_integer_labels(z, labels, where=keep)
        if fn == "int"
        else optax.softmax_cross_entropy(z, y, where=keep)
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert ours[1] == 0  # a fully masked example gives 0, as in optax
    np.testing.assert_allclose(ours[keep], _lse_minus_label(z, labels)[np.asarray(keep)], rtol=1e-6)
    f = INT if fn == "int" else SOFT
    g = jax.grad(lambda z: f(z, y, where=keep, reduction="mean"))(z)
    assert np.all(g[1] == 0)
    # "mean" counts the unmasked examples only
    np.testing.assert_allclose(f(z, y, where=keep, reduction="mean"), jnp.sum(ours) / 3, rtol=1e-6)


def test_zero_sample_weight_zeroes_an_infinite_loss():
    z = jax.random.normal(jax.random.PRNGKey(3), (3, 4)).at[1].set(-jnp.inf)
    labels = jnp.array([0, 1, 2])
    w = jnp.array([1.0, 0.0, 1.0])
    loss = INT(z, labels, sample_weights=w)
    assert loss[1] == 0 and np.all(np.isfinite(loss))
    assert np.isfinite(INT(z, labels, sample_weights=w, reduction="mean"))
    g = jax.grad(lambda z: INT(z, labels, sample_weights=w, reduction="sum"))(z)
    assert np.all(g[1] == 0) and np.all(np.isfinite(g))
    assert INT(z, labels)[1] == np.inf  # unweighted, the row of -inf logits is +inf


# -- aux and normalizer (issue 14 item 9) ------------------------------------------------


def test_aux_correct_of_probability_targets_ignores_class_weights():
    z = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    y = jnp.array([[0.6, 0.4, 0.0], [0.1, 0.2, 0.7]])
    w = jnp.array([1.0, 3.0, 1.0])  # weighted, class 1 would be row 0's argmax
    _, aux = SOFT(z, y, class_weights=w, return_aux=True)
    np.testing.assert_array_equal(aux.correct, [True, True])
    _, aux = SOFT(z, y, label_smoothing=0.5, return_aux=True)
    np.testing.assert_array_equal(aux.correct, [True, True])
    _, aux = SOFT(z[::-1], y, class_weights=w, return_aux=True)
    np.testing.assert_array_equal(aux.correct, [False, False])


@pytest.mark.parametrize("fn", ["int", "soft"])
def test_aux_denominator_is_the_normalizer(fn):
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
    y = jnp.array([0, 3]) if fn == "int" else jax.nn.one_hot(jnp.array([0, 3]), 4)
    f = INT if fn == "int" else SOFT
    loss, aux = f(z, y, reduction="mean", normalizer=10.0, return_aux=True)
    assert aux.denominator == 10.0
    np.testing.assert_allclose(loss, jnp.sum(f(z, y)) / 10, rtol=1e-6)


def test_normalizer_must_be_a_scalar():
    z, y = jnp.zeros((2, 4)), jnp.array([0, 3])
    with pytest.raises(ValueError, match=r"normalizer.*scalar.*\(2,\)"):
        INT(z, y, reduction="mean", normalizer=jnp.array([2.0, 2.0]))


# -- array hyperparameters (issue 13 item 4; issue 14 item 4) --------------------------

N_, C_ = 4, 5


def _problem():
    z = 2 * jax.random.normal(jax.random.PRNGKey(0), (N_, C_))
    return z, jnp.array([0, 3, 4, 1])


def test_traced_options_equal_static_ones():
    z, y = _problem()
    w = jnp.linspace(0.5, 2.0, C_)
    s = jnp.array([1.0, 0.5, 2.0, 1.0])

    @jax.jit
    def traced(z, eps, zeta, norm, w, s):
        return INT(
            z,
            y,
            label_smoothing=eps,
            z_loss=zeta,
            normalizer=norm,
            class_weights=w,
            sample_weights=s,
            reduction="mean",
        )

    def static(z):
        return INT(
            z,
            y,
            label_smoothing=0.2,
            z_loss=1e-2,
            normalizer=7.0,
            class_weights=w,
            sample_weights=s,
            reduction="mean",
        )

    args = (jnp.float32(0.2), jnp.float32(1e-2), jnp.float32(7.0), w, s)
    np.testing.assert_allclose(traced(z, *args), static(z), rtol=2e-6)
    np.testing.assert_allclose(
        jax.grad(traced)(z, *args), jax.grad(static)(z), rtol=2e-5, atol=1e-7
    )
    # A schedule: the same compiled step for each value.
    for eps in (0.0, 0.1, 0.3):
        want = INT(z, y, label_smoothing=eps, reduction="mean")
        got = jax.jit(lambda z, e: INT(z, y, label_smoothing=e, reduction="mean"))(z, eps)
        np.testing.assert_allclose(got, want, rtol=2e-6)
    # the gradient with respect to a traced option is the derivative of the loss
    d_eps = jax.grad(lambda e: INT(z, y, label_smoothing=e, reduction="sum"))(jnp.float32(0.2))
    fd = (
        INT(z, y, label_smoothing=0.201, reduction="sum")
        - INT(z, y, label_smoothing=0.199, reduction="sum")
    ) / 0.002
    np.testing.assert_allclose(d_eps, fd, rtol=1e-2)
    p = jax.nn.softmax(z)
    soft_t = jax.jit(lambda z, e, zl: SOFT(z, p, label_smoothing=e, z_loss=zl))
    np.testing.assert_allclose(
        soft_t(z, 0.2, 1e-2), SOFT(z, p, label_smoothing=0.2, z_loss=1e-2), rtol=2e-6
    )


def test_t5x_with_traced_smoothing():
    z, y = _problem()
    got = jax.jit(lambda z, e: INT(z, y, label_smoothing=e, smoothing="t5x"))(z, 0.1)
    np.testing.assert_allclose(got, INT(z, y, label_smoothing=0.1, smoothing="t5x"), rtol=2e-6)


def test_class_weights_closed_over_by_jit_and_checkpoint():
    z, y = _problem()
    cw = jnp.linspace(0.5, 2.0, C_)
    want = INT(z, y, class_weights=cw, reduction="mean")
    f = lambda z: INT(z, y, class_weights=cw, reduction="mean")  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(z), want, rtol=1e-6)
    np.testing.assert_allclose(jax.checkpoint(f)(z), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(jax.checkpoint(f)))(z), jax.grad(f)(z), rtol=1e-6)
    negative = -cw  # closed over: concrete, so it raises at trace time
    with pytest.raises(ValueError, match="class_weights.*non-negative"):
        jax.jit(lambda z: INT(z, y, class_weights=negative))(z)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("label_smoothing", 1.5, r"label_smoothing.*\[0, 1\].*1.5"),
        ("z_loss", -1.0, "z_loss.*>= 0.*-1"),
        ("normalizer", 0.0, "normalizer.*> 0.*0"),
        ("class_weights", -jnp.ones(C_), "class_weights.*non-negative"),
    ],
)
def test_traced_bad_options_are_checkify_errors_and_nan(name, value, match):
    z, y = _problem()
    kw = {"reduction": "mean"}

    @jax.jit
    def f(z, v):
        return INT(z, y, **{name: v}, **kw)

    loss = f(z, value)
    assert np.isnan(loss)  # never a plausible number
    err, out = checkify.checkify(f)(z, value)
    assert np.isnan(out)
    with pytest.raises(Exception, match=match):
        err.throw()
    good = {"label_smoothing": 0.1, "z_loss": 0.1, "normalizer": 2.0, "class_weights": jnp.ones(C_)}
    err, out = checkify.checkify(f)(z, good[name])
    err.throw()  # a valid value passes
    assert np.isfinite(out)
    with pytest.raises(ValueError, match=match):  # a concrete value raises at once
        INT(z, y, **{name: jnp.asarray(value)}, **kw)


# -- smoothing="t5x" edge cases (issue 14 item 8) --------------------------------------


@pytest.mark.parametrize("eps", [0.1, 0.5, 0.9, 1.0])
def test_t5x_label_on_an_impossible_class_is_inf(eps):
    z = jnp.array([[0.0, 1.0, 2.0, 3.0], [0.0, -jnp.inf, 2.0, 3.0]])
    where = jnp.array([[True, False, True, True], [True] * 4])
    loss = INT(z, jnp.array([1, 1]), where=where, label_smoothing=eps, smoothing="t5x")
    np.testing.assert_array_equal(loss, [np.inf, np.inf])
    g = jax.grad(
        lambda z: jnp.sum(
            INT(z, jnp.array([1, 1]), where=where, label_smoothing=eps, smoothing="t5x")
        )
    )(z)
    assert not np.any(np.isnan(g))


def test_t5x_with_one_valid_class_is_the_plain_loss():
    z = jnp.array([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0]])
    where = jnp.array([[True, False, False], [True, True, False]])
    loss = INT(z, jnp.array([0, 0]), where=where, label_smoothing=0.1, smoothing="t5x")
    assert loss[0] == 0  # a perfect prediction of the only class
    # two valid classes: the T5X formula (target 0.9 / 0.1, minus its entropy)
    lp = jax.nn.log_softmax(jnp.array([3.0, 1.0]))
    want = -(0.9 * lp[0] + 0.1 * lp[1]) + (0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(loss[1], want, atol=1e-7)  # a difference of ~0.3-size terms


def test_t5x_eps_one_with_a_possible_label_is_finite(x64):
    z = jnp.array([0.0, 1.0, 2.0, 3.0], jnp.float64)
    loss = INT(z, jnp.array(0), label_smoothing=1.0, smoothing="t5x")
    # target 1/3 on classes 1..3, none on the label; minus the entropy log 3
    lp = jax.nn.log_softmax(z)
    np.testing.assert_allclose(loss, -jnp.sum(lp[1:]) / 3 - np.log(3), rtol=1e-13)


# -- ignored rows (issue 14 item 11) ------------------------------------------------


def test_ignored_rows_with_nan_logits():
    """An ignored row's loss is 0 and its gradient exactly 0, whatever its logits."""
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 4)).at[1, 2].set(jnp.nan).at[1, 0].set(jnp.inf)
    y = jnp.array([0, -100, 2])
    loss = INT(z, y, ignore_index=-100)
    assert loss[1] == 0 and np.all(np.isfinite(loss))
    for fused in (True, False):
        kw = dict(ignore_index=-100, z_loss=1e-2, label_smoothing=0.1, fused=fused)
        assert np.isfinite(INT(z, y, reduction="mean", **kw))
        g = jax.grad(lambda z: INT(z, y, reduction="mean", **kw))(z)
        assert np.all(g[1] == 0) and np.all(np.isfinite(g))
        want = jax.grad(lambda z: INT(z, y, reduction="mean", **kw))(z.at[1].set(0.0))
        np.testing.assert_allclose(g, want, rtol=1e-6)
    # a weight of 0 likewise
    g = jax.grad(
        lambda z: INT(
            z, jnp.array([0, 1, 2]), sample_weights=jnp.array([1.0, 0, 1]), reduction="sum"
        )
    )(z)
    assert np.all(g[1] == 0) and np.all(np.isfinite(g))


@pytest.mark.parametrize("fn", ["int", "soft"])
def test_traced_logit_softcap(x64, fn):
    """An array cap equals the static one, and d/dc matches the plain formula."""
    z = 40 * jax.random.normal(jax.random.PRNGKey(0), (4, 6), jnp.float64)
    labels = jnp.array([0, 5, 2, 3])
    y = labels if fn == "int" else jax.nn.softmax(z / 50)
    f = INT if fn == "int" else SOFT

    def plain(z, c):
        zc = c * jnp.tanh(z / c)
        lse = jax.nn.logsumexp(zc, axis=-1)
        if fn == "int":
            return jnp.sum(lse - jnp.take_along_axis(zc, labels[:, None], -1)[:, 0])
        return jnp.sum(jnp.sum(y * (lse[:, None] - zc), -1))

    traced = jax.jit(lambda z, c: jnp.sum(f(z, y, logit_softcap=c)))
    c = jnp.float64(30.0)
    np.testing.assert_allclose(traced(z, c), jnp.sum(f(z, y, logit_softcap=30.0)), rtol=1e-13)
    np.testing.assert_allclose(traced(z, c), plain(z, c), rtol=1e-13)
    for arg in (0, 1):
        np.testing.assert_allclose(
            jax.grad(traced, arg)(z, c), jax.grad(plain, arg)(z, c), rtol=1e-11, atol=1e-13
        )
    assert abs(jax.grad(plain, 1)(z, c)) > 1e-3  # the cap's gradient is not trivially 0
    assert np.isnan(traced(z, -1.0))
    err, _ = checkify.checkify(traced)(z, 0.0)
    with pytest.raises(Exception, match="logit_softcap.*> 0"):
        err.throw()
