"""Loss options through the fused gradient: fused vs autodiff vs a textbook reference.

The textbook reference writes the effective targets out densely and takes
``-sum y log_softmax(z)`` with ``jax.nn``; it shares no code with jaxsce.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
