"""The fused linear loss's methods, soft cap, aux outputs, label dtypes and edge cases."""

import functools
import re

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from jaxsce._linear import linear_softmax_cross_entropy
from jaxsce._vocab_parallel import vocab_parallel_softmax_cross_entropy
from tests._references import ulp_error

L = linear_softmax_cross_entropy


def _data(n=12, d=8, v=37, seed=0, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k[0], (n, d), jnp.float32).astype(dtype)
    weight = (jax.random.normal(k[1], (d, v), jnp.float32) / float(np.sqrt(d)) * 3).astype(dtype)
    bias = jax.random.normal(k[2], (v,), jnp.float32).astype(dtype)
    labels = jax.random.randint(k[3], (n,), 0, v)
    return hidden, weight, bias, labels


def _plain_losses(h, w, y, b=None, eps=0.0, zeta=0.0, cap=None, ignore_index=None):
    """Per-example loss from the materialised logits; JAX differentiates it."""
    z = h @ w
    if b is not None:
        z = z + b[None, :]
    if cap is not None:
        z = cap * jnp.tanh(z / cap)
    v = z.shape[-1]
    lse = jax.nn.logsumexp(z, axis=-1)
    q = (1.0 - eps) * jax.nn.one_hot(y, v, dtype=z.dtype) + eps / v
    loss = jnp.sum(q * (lse[:, None] - z), axis=-1) + zeta * lse**2
    if ignore_index is not None:
        loss = jnp.where(y == ignore_index, 0.0, loss)
    return loss


def _count_dots(fn, *args):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return len(re.findall(r"\sdot\(", hlo))


# --------------------------------------------------------------------------
# "precompute": gradient in the forward pass.
# --------------------------------------------------------------------------

PRECOMPUTE_CASES = {
    "sum": dict(reduction="sum"),
    "mean-ignore": dict(reduction="mean", ignore_index=-100),
    "all-options": dict(
        reduction="mean", ignore_index=-100, label_smoothing=0.2, z_loss=1e-3, logit_softcap=5.0
    ),
}


@pytest.mark.parametrize("case", PRECOMPUTE_CASES.values(), ids=PRECOMPUTE_CASES.keys())
def test_precompute_matches_recompute_and_plain(case, x64, monkeypatch):
    import jaxsce._linear as jl

    monkeypatch.setattr(jl, "BLOCK_BYTES", 8 * 37 * 5)  # blocks of 5 rows: a tail block overlaps
    jax.clear_caches()
    hidden, weight, bias, labels = _data(n=13, dtype=jnp.float64)
    labels = labels.at[::4].set(-100) if "ignore_index" in case else labels

    def fused(method, h, w, b):
        return L(h, w, labels, bias=b, method=method, chunk_size=8, **case)

    def plain(h, w, b):
        loss = _plain_losses(
            h,
            w,
            labels,
            b,
            case.get("label_smoothing", 0.0),
            case.get("z_loss", 0.0),
            case.get("logit_softcap"),
            case.get("ignore_index"),
        )
        if case["reduction"] == "sum":
            return jnp.sum(loss)
        counted = labels != -100 if "ignore_index" in case else jnp.ones(labels.shape, bool)
        return jnp.sum(loss) / jnp.sum(counted).astype(loss.dtype)

    want, want_grads = jax.value_and_grad(plain, (0, 1, 2))(hidden, weight, bias)
    for method in ("precompute", "recompute"):
        got, grads = jax.jit(jax.value_and_grad(functools.partial(fused, method), (0, 1, 2)))(
            hidden, weight, bias
        )
        np.testing.assert_allclose(got, want, rtol=1e-12)
        for g, r in zip(grads, want_grads):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    jax.clear_caches()


def test_precompute_scales_by_the_cotangent():
    """The backward pass multiplies by the loss's cotangent (here 3, through 3 * loss)."""
    hidden, weight, _, labels = _data()
    fn = functools.partial(L, labels=labels, reduction="sum", method="precompute")
    once = jax.grad(lambda w: fn(hidden, w))(weight)
    thrice = jax.grad(lambda w: 3.0 * fn(hidden, w))(weight)
    np.testing.assert_allclose(thrice, 3.0 * once, rtol=1e-6)
    assert not np.allclose(thrice, once, rtol=1e-3)


def test_per_example_cotangents_are_applied_per_example():
    """Liger issue #968: a per-example cotangent must weight each example's gradient.

    With reduction="none" the loss is differentiated through the recomputing
    rule ("auto" never takes "precompute" there, and asking for it raises), so
    a weighted sum of the per-example losses has the weighted gradient. The
    check rejects the bug: every example scaled by the first one's cotangent.
    """
    hidden, weight, _, labels = _data()
    c = 1.0 + jnp.arange(labels.size, dtype=jnp.float32)
    got = jax.grad(lambda w: jnp.sum(c * L(hidden, w, labels)))(weight)
    want = jax.grad(lambda w: jnp.sum(c * _plain_losses(hidden, w, labels)))(weight)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    first_only = c[0] * jax.grad(lambda w: jnp.sum(_plain_losses(hidden, w, labels)))(weight)
    assert not np.allclose(first_only, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="linear_softmax_cross_entropy.*precompute.*reduction"):
        L(hidden, weight, labels, method="precompute")


def test_value_only_does_one_product():
    """Without a gradient one product (in the loop body); with one, 3 (precompute) or 4."""
    args = _data(n=16, d=8, v=64)[:2] + (_data(n=16, d=8, v=64)[3],)

    def loss(method):
        return lambda h, w, y: L(h, w, y, reduction="mean", method=method, chunk_size=16)

    assert _count_dots(loss("precompute"), *args) == 1
    assert _count_dots(loss("recompute"), *args) == 1
    assert _count_dots(jax.value_and_grad(loss("precompute"), (0, 1)), *args) == 3
    assert _count_dots(jax.value_and_grad(loss("recompute"), (0, 1)), *args) == 4
    # The count can fail: the unfused loss does its three products.
    unfused = jax.value_and_grad(lambda h, w, y: jnp.mean(_plain_losses(h, w, y)), (0, 1))
    assert _count_dots(unfused, *args) == 3


def test_auto_chooses_by_memory(monkeypatch):
    import jaxsce._linear as jl

    assert jl._choose_method("auto", "mean", False, (1024, 32768)) == "precompute"
    assert jl._choose_method("auto", "none", False, (1024, 32768)) == "recompute"
    assert jl._choose_method("auto", "sum", True, (1024, 32768)) == "recompute"
    # 4 bytes x 4096 x 128256 = 2 GiB of float32 weight gradient: over the 1 GiB cap.
    assert jl._choose_method("auto", "mean", False, (4096, 128256)) == "recompute"
    assert jl._choose_method("recompute", "mean", False, (8, 8)) == "recompute"


# --------------------------------------------------------------------------
# Soft cap, aux outputs.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["recompute", "precompute"])
def test_softcap_matches_autodiff_in_float64(method, x64):
    hidden, weight, bias, labels = _data(dtype=jnp.float64)
    hidden = hidden * 4  # logits well past the cap of 3

    def fused(h, w, b):
        return L(h, w, labels, bias=b, logit_softcap=3.0, reduction="sum", method=method)

    def plain(h, w, b, cap=3.0):
        return jnp.sum(_plain_losses(h, w, labels, b, cap=cap))

    got, grads = jax.value_and_grad(fused, (0, 1, 2))(hidden, weight, bias)
    want, want_grads = jax.value_and_grad(plain, (0, 1, 2))(hidden, weight, bias)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    for g, r in zip(grads, want_grads):
        np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-13)
    # The check rejects a backward pass that leaves out the 1 - tanh^2 factor.
    no_factor = jax.grad(lambda z: jnp.sum(_plain_losses(jnp.eye(12), z, labels)))(
        3.0 * jnp.tanh((hidden @ weight + bias[None, :]) / 3.0)
    )
    dz = jax.grad(lambda z: fused(jnp.eye(12), z, None))(hidden @ weight + bias[None, :])
    assert not np.allclose(dz, no_factor, rtol=1e-6)


def test_softcap_within_a_few_ulp_of_mpmath():
    """Loss and raw-logit gradient of capped confident rows, against 50-digit mpmath."""
    rng = np.random.default_rng(1)
    cap, v = 30.0, 200
    rows, labels = [], []
    for margin in (0.0, 3.0, 10.0, 25.0, 40.0):
        z = rng.uniform(-8.0, 0.0, v)
        y = int(rng.integers(v))
        z[y] = np.max(np.delete(z, y)) + margin
        rows.append(z.astype(np.float32))
        labels.append(y)
    weight = jnp.asarray(np.stack(rows))
    hidden = jnp.eye(len(rows), dtype=jnp.float32)  # logits are exactly the rows of weight
    labels = jnp.asarray(labels, jnp.int32)
    fn = functools.partial(L, logit_softcap=cap, chunk_size=64)
    loss = jax.jit(fn)(hidden, weight, labels)
    grad = jax.jit(jax.grad(lambda w: jnp.sum(fn(hidden, w, labels))))(weight)
    capped = np.asarray(cap * jnp.tanh(weight / cap), np.float64)  # the float32 capped logits
    with mpmath.workdps(50):
        for i, y in enumerate(np.asarray(labels)):
            zs = [mpmath.mpf(float(t)) for t in capped[i]]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(t) for t in zs))
            ref_loss = float(lse - zs[y])
            raw = [mpmath.mpf(float(t)) for t in np.asarray(weight[i], np.float64)]
            ref_grad = np.array(
                [
                    float((mpmath.exp(zs[k] - lse) - (k == y)) / mpmath.cosh(raw[k] / cap) ** 2)
                    for k in range(v)
                ]
            )
            assert ulp_error(loss[i], ref_loss) <= 4, (i, ulp_error(loss[i], ref_loss))
            assert ulp_error(grad[i], ref_grad).max() <= 4, i


def test_aux_outputs_and_their_gradients(x64):
    hidden, weight, bias, labels = _data(dtype=jnp.float64)
    labels = labels.at[0].set(-100)
    fn = functools.partial(L, bias=bias, ignore_index=-100, chunk_size=8, return_aux=True)
    loss, aux = fn(hidden, weight, labels)
    z = hidden @ weight + bias[None, :]
    lse = jax.nn.logsumexp(z, axis=-1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(z), jnp.maximum(labels, 0)[:, None], 1)[:, 0]
    np.testing.assert_allclose(aux.logsumexp[1:], lse[1:], rtol=1e-13)
    np.testing.assert_allclose(aux.label_logprob[1:], logp[1:], rtol=1e-12)
    np.testing.assert_array_equal(aux.correct[1:], jnp.argmax(z, -1)[1:] == labels[1:])
    assert aux.logsumexp[0] == 0 and aux.label_logprob[0] == 0 and not aux.correct[0]
    assert aux.correct.dtype == jnp.bool_ and np.any(aux.correct) is not None

    # Gradients of a mixed objective through all three differentiable outputs.
    c = jnp.linspace(0.5, 2.0, labels.size)

    def objective(h, w):
        loss, aux = fn(h, w, labels)
        return jnp.sum(c * loss) + jnp.sum(c**2 * aux.logsumexp) - jnp.sum(aux.label_logprob)

    def plain_objective(h, w):
        z = h @ w + bias[None, :]
        lse = jax.nn.logsumexp(z, axis=-1)
        logp = jnp.take_along_axis(jax.nn.log_softmax(z), jnp.maximum(labels, 0)[:, None], 1)
        keep = labels != -100
        return jnp.sum(jnp.where(keep, -c * logp[:, 0] + c**2 * lse - logp[:, 0], 0.0))

    got = jax.grad(objective, (0, 1))(hidden, weight)
    want = jax.grad(plain_objective, (0, 1))(hidden, weight)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    # The check rejects aux outputs treated as constants (no gradient of their own).
    const = jax.grad(lambda h, w: jnp.sum(c * fn(h, w, labels)[0]), (0, 1))(hidden, weight)
    assert not np.allclose(const[1], want[1], rtol=1e-6)


# --------------------------------------------------------------------------
# Label dtypes, ignored rows, precision of the smoothing term.
# --------------------------------------------------------------------------

INT_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32"]


def _vp_single(z, y, **kw):
    """The vocab-parallel logits loss on one shard (vmap over a mapped axis of size 1)."""
    return jax.vmap(
        lambda z: vocab_parallel_softmax_cross_entropy(z, y, axis_name="s", **kw), axis_name="s"
    )(z[None])[0]


def test_every_label_dtype_as_int32():
    """Labels of each integer dtype give the int32 answer; nothing wraps (V = 300)."""
    hidden, weight, _, _ = _data(n=6, d=4, v=300)
    for dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        values = [0, 3, 255, 259, 100, 156, int(info.max)]
        y32 = jnp.array([x for x in values if x < 300 and x <= info.max], jnp.int32)
        h = hidden[: y32.size]
        y = y32.astype(dtype)
        for method in ("recompute", "precompute"):
            kw = dict(ignore_index=-100, reduction="sum", method=method)
            got = jax.value_and_grad(lambda w: L(h, w, y, **kw))(weight)
            want = jax.value_and_grad(lambda w: L(h, w, y32, **kw))(weight)
            assert np.isfinite(got[0]), dtype
            np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-7)
        z = h @ weight
        np.testing.assert_allclose(
            _vp_single(z, y, ignore_index=-100), _vp_single(z, y32, ignore_index=-100), rtol=1e-6
        )


def test_narrow_labels_against_the_reported_failures():
    # uint8 labels, V = 256 (a byte-level model): finite and right.
    hidden, weight, _, _ = _data(n=4, d=4, v=256)
    y = jnp.array([0, 255, 17, 200], jnp.uint8)
    want = _plain_losses(hidden, weight, y.astype(jnp.int32))
    np.testing.assert_allclose(L(hidden, weight, y), want, rtol=2e-6)
    # uint8 labels with ignore_index=-100: class 156 (= -100 mod 256) is not ignored.
    y = jnp.array([156, 1, 2, 3], jnp.uint8)
    loss = L(hidden, weight, y, ignore_index=-100)
    np.testing.assert_allclose(loss[0], want[0] * 0 + _plain_losses(hidden, weight, y)[0])
    assert loss[0] > 0
    # int16 labels with V = 32768: label 32767 is a class, not a wrapped -32768.
    hidden, weight, _, _ = _data(n=2, d=2, v=32768)
    y = jnp.array([32767, 5], jnp.int16)
    np.testing.assert_allclose(
        L(hidden, weight, y), _plain_losses(hidden, weight, y.astype(jnp.int32)), rtol=2e-6
    )
    # Out-of-range labels of a narrow dtype give NaN, not another class.
    hidden, weight, _, _ = _data(n=2, d=2, v=100)
    assert np.isnan(L(hidden, weight, jnp.array([200, 1], jnp.uint8))[0])


def test_nan_in_an_ignored_row_reaches_no_gradient():
    hidden, weight, bias, labels = _data()
    hidden = hidden.at[2].set(jnp.nan)
    labels = labels.at[2].set(-100)
    for method in ("recompute", "precompute"):
        fn = functools.partial(L, ignore_index=-100, reduction="mean", method=method)
        loss, grads = jax.value_and_grad(lambda h, w, b: fn(h, w, labels, bias=b), (0, 1, 2))(
            hidden, weight, bias
        )
        assert np.isfinite(loss)
        assert all(np.all(np.isfinite(g)) for g in grads)
        np.testing.assert_array_equal(grads[0][2], 0.0)
        clean = hidden.at[2].set(0.0)
        want = jax.grad(lambda w: fn(clean, w, labels, bias=bias))(weight)
        np.testing.assert_allclose(grads[1], want, rtol=1e-6, atol=1e-7)
    # The check can fail: the plain formulation lets the NaN through.
    plain = jax.grad(lambda w: jnp.sum(_plain_losses(hidden, w, labels, ignore_index=-100)))
    assert not np.all(np.isfinite(plain(weight)))


@pytest.mark.parametrize("offset", [1e4, -1e4])
def test_smoothing_term_accurate_under_a_common_offset(offset):
    """Loss with label_smoothing on logits offset by 1e4, against float64 (old: ~70 ulp)."""
    rng = np.random.default_rng(0)
    rows = (rng.uniform(-3, 3, (6, 1000)) + offset).astype(np.float32)
    labels = jnp.asarray(rng.integers(0, 1000, 6), jnp.int32)
    weight, hidden = jnp.asarray(rows), jnp.eye(6, dtype=jnp.float32)
    eps = 0.1
    z = rows.astype(np.float64)
    m = z.max(-1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(-1))
    zy = z[np.arange(6), np.asarray(labels)]
    ref = (1 - eps) * (lse - zy) + eps * (lse - z.mean(-1))
    for method in ("recompute",):
        loss = L(hidden, weight, labels, label_smoothing=eps, chunk_size=128, method=method)
        assert ulp_error(loss, ref).max() <= 4, ulp_error(loss, ref)
    got = _vp_single(weight, labels, label_smoothing=eps)
    assert ulp_error(got, ref).max() <= 4
    # The bound rejects the old formula m - sum(z) / V in float32.
    zsum = jnp.sum(weight, axis=-1)
    mm = jnp.max(weight, axis=-1)
    lse32 = jax.nn.logsumexp(weight, axis=-1)
    old = (1 - eps) * (lse32 - weight[jnp.arange(6), labels]) + eps * (
        (mm - zsum / 1000) + (lse32 - mm)
    )
    assert ulp_error(old, ref).max() > 4


# --------------------------------------------------------------------------
# Arguments: edge sizes, numpy scalars, misspelled and non-hashable options.
# --------------------------------------------------------------------------


def test_zero_sizes():
    hidden = jnp.zeros((3, 0))
    weight = jnp.zeros((0, 5))
    labels = jnp.array([0, 1, 4])
    bias = jnp.arange(5.0)
    # D = 0: the logits are the bias (0 without one).
    np.testing.assert_allclose(L(hidden, weight, labels), np.log(5.0) * np.ones(3), rtol=1e-6)
    want = jax.nn.logsumexp(bias) - bias[labels]
    np.testing.assert_allclose(L(hidden, weight, labels, bias=bias), want, rtol=1e-6)
    db = jax.grad(lambda b: L(hidden, weight, labels, bias=b, reduction="sum"))(bias)
    counts = jnp.bincount(labels, length=5).astype(jnp.float32)
    np.testing.assert_allclose(db, 3 * jax.nn.softmax(bias) - counts)
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: `weight`.*V = 0"):
        L(jnp.zeros((3, 2)), jnp.zeros((2, 0)), labels)
    # N = 0: an empty loss, a zero sum.
    empty = L(jnp.zeros((0, 2)), jnp.ones((2, 5)), jnp.zeros((0,), jnp.int32))
    assert empty.shape == (0,)
    assert L(jnp.zeros((0, 2)), jnp.ones((2, 5)), jnp.zeros((0,), jnp.int32), reduction="sum") == 0


def test_numpy_integer_options():
    hidden, weight, _, labels = _data()
    labels = labels.at[0].set(-100)
    got = L(hidden, weight, labels, chunk_size=np.int64(8), ignore_index=np.int64(-100))
    want = L(hidden, weight, labels, chunk_size=8, ignore_index=-100)
    np.testing.assert_array_equal(got, want)


def test_misspelled_and_non_hashable_options_raise_python_errors():
    hidden, weight, _, labels = _data()
    with pytest.raises(TypeError, match="unexpected keyword argument 'label_smothing'"):
        L(hidden, weight, labels, label_smothing=0.1)
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: `label_smoothing`"):
        L(hidden, weight, labels, label_smoothing=[0.1])
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: `chunk_size`"):
        L(hidden, weight, labels, chunk_size=[8])
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: `ignore_index`"):
        L(hidden, weight, labels, ignore_index=[-100])
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: `method`"):
        L(hidden, weight, labels, method="fast")
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: `logit_softcap`"):
        L(hidden, weight, labels, logit_softcap=0.0)
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: `return_aux`"):
        L(hidden, weight, labels, return_aux=1)
    with pytest.raises(ValueError, match=r"vocab_parallel_softmax_cross_entropy: `z_loss`"):
        vocab_parallel_softmax_cross_entropy(hidden, labels, axis_name="s", z_loss={})
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: `z_loss`.*shape"):
        L(hidden, weight, labels, z_loss=jnp.zeros(2))


# --------------------------------------------------------------------------
# Array options (issue 13 item 4): operands of the rules, with true cotangents.
# --------------------------------------------------------------------------

ARRAY_KINDS = ("recompute", "precompute", "logits")


def _one_device_vp(z, y, **kw):
    """The vocab-parallel logits loss inside a one-device ``shard_map`` (gradients work)."""
    from jax.sharding import PartitionSpec as P

    mesh = jax.sharding.Mesh(jax.devices()[:1], ("s",))
    return jax.shard_map(
        lambda z: vocab_parallel_softmax_cross_entropy(z, y, axis_name="s", **kw),
        mesh=mesh,
        in_specs=P(None, "s"),
        out_specs=P(),
    )(z)


def _fused_by_kind(kind, h, w, b, y, **kw):
    if kind == "logits":
        return _one_device_vp(h @ w + b[None, :], y, **kw)
    return L(h, w, y, bias=b, chunk_size=8, method=kind, **kw)


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_array_options_have_true_gradients_in_float64(kind, x64):
    """Loss and every gradient, options included, against autodiff of the plain loss.

    The options are traced arrays (jit arguments); today's code raised for them.
    """
    hidden, weight, bias, labels = _data(n=10, v=29, dtype=jnp.float64)
    labels = labels.at[0].set(-100)
    options = (jnp.float64(0.2), jnp.float64(1e-2), jnp.float64(4.0))  # eps, zeta, cap

    def fused(h, w, b, eps, zeta, cap):
        kw = dict(label_smoothing=eps, z_loss=zeta, logit_softcap=cap)
        return _fused_by_kind(kind, h, w, b, labels, reduction="sum", ignore_index=-100, **kw)

    def plain(h, w, b, eps, zeta, cap):
        losses = _plain_losses(h, w, labels, b, eps, zeta, cap, ignore_index=-100)
        return jnp.sum(losses)

    argnums = tuple(range(6))
    got = jax.jit(jax.value_and_grad(fused, argnums))(hidden, weight, bias, *options)
    want = jax.value_and_grad(plain, argnums)(hidden, weight, bias, *options)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-13)
    for name, a, b in zip(("hidden", "weight", "bias", "eps", "zeta", "cap"), got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13, err_msg=name)
        assert a.dtype == jnp.float64
    # The option cotangents are far from 0 (a zero or dropped cotangent fails), and
    # from what a wrong convention gives (eps / (V - 1) off the label, T5X's).
    for g in want[1][3:]:
        assert abs(float(g)) > 1e-2
    z = 4.0 * jnp.tanh((hidden @ weight + bias[None, :]) / 4.0)
    keep = labels != -100
    y = jnp.where(keep, labels, 0)
    zy = jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0]
    wrong = jnp.sum(jnp.where(keep, zy - (jnp.sum(z, -1) - zy) / (z.shape[-1] - 1), 0.0))
    right = jnp.sum(jnp.where(keep, zy - jnp.mean(z, -1), 0.0))
    np.testing.assert_allclose(got[1][3], right, rtol=1e-12)
    assert abs(float(got[1][3] - wrong)) > 1e-3


@pytest.mark.parametrize("kind", ("recompute", "logits"))  # precompute: scalar losses only
def test_array_options_with_a_per_example_cotangent(kind, x64):
    """reduction="none" with per-example cotangents (and aux outputs for "recompute")."""
    hidden, weight, bias, labels = _data(n=7, v=19, dtype=jnp.float64)
    ct = jnp.linspace(-1.0, 2.0, 7, dtype=jnp.float64)
    aux = kind == "recompute"

    def fused(eps, zeta, cap):
        kw = dict(label_smoothing=eps, z_loss=zeta, logit_softcap=cap, return_aux=aux)
        out = _fused_by_kind(kind, hidden, weight, bias, labels, **kw)
        if not aux:
            return jnp.vdot(ct, out)
        loss, a = out
        return jnp.vdot(ct, loss) + jnp.sum(a.logsumexp) - 0.5 * jnp.sum(a.label_logprob)

    def plain(eps, zeta, cap):
        z = cap * jnp.tanh((hidden @ weight + bias[None, :]) / cap)
        total = jnp.vdot(ct, _plain_losses(hidden, weight, labels, bias, eps, zeta, cap))
        if aux:
            lse = jax.nn.logsumexp(z, axis=-1)
            zy = jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
            total = total + jnp.sum(lse) - 0.5 * jnp.sum(zy - lse)
        return total

    args = (jnp.float64(0.3), jnp.float64(2e-2), jnp.float64(2.5))
    got = jax.jit(jax.grad(fused, (0, 1, 2)))(*args)
    want = jax.grad(plain, (0, 1, 2))(*args)
    np.testing.assert_allclose(got, want, rtol=1e-11)


def test_array_options_equal_the_static_numbers_and_add_no_product():
    hidden, weight, bias, labels = _data()
    kw = dict(bias=bias, chunk_size=8, reduction="mean")
    values = dict(label_smoothing=0.1, z_loss=1e-3, logit_softcap=5.0)
    arrays = {k: jnp.float32(v) for k, v in values.items()}
    for method in ("recompute", "precompute"):
        want = jax.value_and_grad(lambda w: L(hidden, w, labels, method=method, **kw, **values))
        got = jax.jit(
            jax.value_and_grad(lambda w, o: L(hidden, w, labels, method=method, **kw, **o))
        )
        g, w = got(weight, arrays), want(weight)
        np.testing.assert_allclose(g[0], w[0], rtol=1e-6)
        np.testing.assert_allclose(g[1], w[1], rtol=1e-5, atol=1e-7)
    # Without a gradient: the forward statistics only (one product), arrays or not.
    assert _count_dots(lambda w, o: L(hidden, w, labels, **kw, **o), weight, arrays) == 1
    # A Python number keeps the static path: no option operand, the same residuals.
    f = functools.partial(L, hidden, labels=labels, method="recompute", **kw)
    _, static_vjp = jax.vjp(lambda w: f(w, label_smoothing=0.1), weight)
    _, array_vjp = jax.vjp(lambda w: f(w, label_smoothing=jnp.float32(0.1)), weight)
    static_leaves = jax.tree_util.tree_leaves(static_vjp)
    array_leaves = jax.tree_util.tree_leaves(array_vjp)
    # the array path keeps the option and the per-example smoothing gap beside them
    assert len(array_leaves) == len(static_leaves) + 2


def test_a_schedule_inside_a_jitted_step_and_vmap_over_the_option():
    hidden, weight, bias, labels = _data()

    @jax.jit
    def step(w, i):
        eps = 0.2 * i / 10  # a ramp: traced
        return jax.value_and_grad(
            lambda w: L(hidden, w, labels, reduction="sum", label_smoothing=eps, z_loss=eps / 10)
        )(w)

    for i in (0, 5, 10):
        eps = 0.2 * i / 10
        want = jax.value_and_grad(
            lambda w: L(hidden, w, labels, reduction="sum", label_smoothing=eps, z_loss=eps / 10)
        )(weight)
        got = step(weight, jnp.float32(i))
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    # vmap over the option: per-example losses, and the option's gradient.
    eps = jnp.array([0.0, 0.1, 0.7], jnp.float32)
    caps = jnp.array([1.0, 3.0, 30.0], jnp.float32)
    for fn in (
        lambda e, c: L(hidden, weight, labels, label_smoothing=e, logit_softcap=c),
        lambda e, c: vocab_parallel_softmax_cross_entropy(
            hidden @ weight, labels, axis_name=None, label_smoothing=e, logit_softcap=c
        ),
    ):
        got = jax.vmap(fn)(eps, caps)
        want = jnp.stack([fn(float(e), float(c)) for e, c in zip(eps, caps)])
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # and of the option's gradient: d loss / d eps = sum(z_y - mean(z)), linear in eps.
    sum_loss = functools.partial(L, hidden, weight, labels, reduction="sum", method="precompute")
    grad = jax.vmap(jax.grad(lambda e: sum_loss(label_smoothing=e)))(eps)
    z = hidden @ weight
    want = jnp.sum(jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0] - jnp.mean(z, -1))
    np.testing.assert_allclose(grad, jnp.full(3, want), rtol=1e-5)
    assert abs(float(want)) > 1.0


def test_traced_options_out_of_range_give_nan_and_a_checkify_error():
    from jax.experimental import checkify

    hidden, weight, bias, labels = _data()
    for name, bad in (("label_smoothing", 1.5), ("z_loss", -1.0), ("logit_softcap", 0.0)):
        for method in ("recompute", "precompute"):
            fn = jax.jit(
                lambda x: L(hidden, weight, labels, reduction="sum", method=method, **{name: x})
            )
            assert np.isnan(fn(jnp.float32(bad)))
            assert np.isfinite(fn(jnp.float32(0.5)))
            err, _ = checkify.checkify(fn, errors=checkify.user_checks)(jnp.float32(bad))
            with pytest.raises(Exception, match=f"linear_softmax_cross_entropy: `{name}`"):
                err.throw()
        vp = jax.jit(
            lambda x: vocab_parallel_softmax_cross_entropy(
                hidden, labels, axis_name=None, **{name: x}
            )
        )
        assert np.isnan(vp(jnp.float32(bad))).all()
        # A concrete array is checked at once.
        with pytest.raises(ValueError, match=f"linear_softmax_cross_entropy: `{name}` must be"):
            L(hidden, weight, labels, **{name: jnp.float32(bad)})
