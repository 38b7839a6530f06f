"""Parity with ``torch.nn.functional.cross_entropy``: loss and gradient, float32.

Skips, with the reason, where PyTorch is not installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsce

torch = pytest.importorskip("torch", reason="PyTorch is not installed: parity tests skipped")
F = torch.nn.functional

INT = jaxsce.softmax_cross_entropy_with_integer_labels
SOFT = jaxsce.softmax_cross_entropy

CASES = {
    "plain-mean": dict(reduction="mean"),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none"),
    "weights": dict(reduction="mean", weight=True),
    "ignore": dict(reduction="mean", ignore_index=-100),
    "ignore-weights": dict(reduction="mean", ignore_index=-100, weight=True),
    "smoothing": dict(reduction="mean", label_smoothing=0.2),
    "smoothing-weights-ignore": dict(
        reduction="mean", label_smoothing=0.1, weight=True, ignore_index=-100
    ),
    "smoothing-sum-ignore": dict(reduction="sum", label_smoothing=0.3, ignore_index=-100),
    "weights-none": dict(reduction="none", weight=True, ignore_index=-100),
}


def _data(shape, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    z = (2 * rng.standard_normal(shape)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=shape[:1] + shape[2:])
    labels.flat[::4] = -100
    w = rng.uniform(0.2, 2.0, num_classes).astype(np.float32)
    return z, labels, w


def _torch(z, labels, w, opts, soft=False):
    zt = torch.tensor(z, requires_grad=True)
    kw = {k: v for k, v in opts.items() if k != "weight"}
    if opts.get("weight"):
        kw["weight"] = torch.tensor(w)
    target = torch.tensor(labels)
    loss = F.cross_entropy(zt, target, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), zt.grad.numpy()


def _ours(z, labels, w, opts, axis=-1, soft=False):
    kw = dict(
        reduction=opts["reduction"],
        label_smoothing=opts.get("label_smoothing", 0.0),
        class_weights=jnp.asarray(w) if opts.get("weight") else None,
    )
    fn = SOFT if soft else INT
    if not soft:
        kw["ignore_index"] = opts.get("ignore_index")
        labels = jnp.asarray(labels if "ignore_index" in opts else np.abs(labels))
    else:
        labels = jnp.asarray(labels)

    def f(z):
        return fn(z, labels, axis=axis, **kw)

    loss, vjp = jax.vjp(f, jnp.asarray(z))
    (grad,) = vjp(jnp.ones_like(loss))
    return np.asarray(loss), np.asarray(grad)


@pytest.mark.parametrize("opts", CASES.values(), ids=CASES.keys())
def test_integer_labels(opts):
    z, labels, w = _data((12, 7), 7)
    if "ignore_index" not in opts:
        labels = np.abs(labels) % 7
    want_loss, want_grad = _torch(z, labels, w, opts)
    loss, grad = _ours(z, labels, w, opts)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("opts", CASES.values(), ids=CASES.keys())
def test_class_axis_not_last(opts):
    """PyTorch's (N, C, d1, d2) layout: jaxsce with axis=1."""
    z, labels, w = _data((3, 5, 4, 2), 5, seed=1)
    if "ignore_index" not in opts:
        labels = np.abs(labels) % 5
    want_loss, want_grad = _torch(z, labels, w, opts)
    loss, grad = _ours(z, labels, w, opts, axis=1)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=1e-7)


SOFT_CASES = {
    "mean": dict(reduction="mean"),
    "sum-weights": dict(reduction="sum", weight=True),
    "none-smoothing": dict(reduction="none", label_smoothing=0.25),
    "mean-smoothing-weights": dict(reduction="mean", label_smoothing=0.1, weight=True),
}


@pytest.mark.parametrize("opts", SOFT_CASES.values(), ids=SOFT_CASES.keys())
def test_probability_targets(opts):
    z, _, w = _data((6, 5), 5, seed=2)
    rng = np.random.default_rng(3)
    t = rng.uniform(size=(6, 5)).astype(np.float32)
    t /= t.sum(-1, keepdims=True)
    want_loss, want_grad = _torch(z, t, w, opts)
    loss, grad = _ours(z, t, w, opts, soft=True)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=1e-7)


def test_parity_check_can_fail():
    """Dropping the weighted denominator is caught by the same comparison."""
    z, labels, w = _data((12, 7), 7)
    labels = np.abs(labels) % 7
    want, _ = _torch(z, labels, w, dict(reduction="mean", weight=True))
    wrong = (
        INT(jnp.asarray(z), jnp.asarray(labels), class_weights=jnp.asarray(w), reduction="sum") / 12
    )
    assert abs(float(wrong) - float(want)) > 1e-3


def test_all_ignored_mean_differs_from_pytorch_by_design():
    z = np.zeros((3, 4), np.float32)
    labels = np.full(3, -100)
    want, _ = _torch(z, labels, None, dict(reduction="mean", ignore_index=-100))
    assert np.isnan(want)
    assert INT(jnp.asarray(z), jnp.asarray(labels), ignore_index=-100, reduction="mean") == 0


# -- sigmoid binary cross-entropy: BCEWithLogitsLoss --------------------------------

BCE = jaxsce.sigmoid_binary_cross_entropy
BCE_CASES = {
    "none": dict(reduction="none"),
    "mean": dict(reduction="mean"),
    "sum": dict(reduction="sum"),
    "pos_weight-mean": dict(reduction="mean", pos_weight=True),
    "pos_weight-none": dict(reduction="none", pos_weight=True),
    "pos_weight-sum-soft": dict(reduction="sum", pos_weight=True, soft=True),
}


@pytest.mark.parametrize("opts", BCE_CASES.values(), ids=BCE_CASES.keys())
def test_sigmoid_binary_cross_entropy(opts):
    rng = np.random.default_rng(4)
    z = (3 * rng.standard_normal((6, 5))).astype(np.float32)
    if opts.get("soft"):
        y = rng.uniform(size=(6, 5)).astype(np.float32)
    else:
        y = rng.integers(0, 2, size=(6, 5)).astype(np.float32)
    pw = rng.uniform(0.2, 4.0, 5).astype(np.float32)  # one per class, PyTorch's broadcast
    zt, yt = torch.tensor(z, requires_grad=True), torch.tensor(y, requires_grad=True)
    pwt = torch.tensor(pw) if opts.get("pos_weight") else None  # torch: no gradient
    loss_t = F.binary_cross_entropy_with_logits(zt, yt, pos_weight=pwt, reduction=opts["reduction"])
    loss_t.sum().backward()

    def ours(z, y, pw):
        return jnp.sum(
            BCE(
                z, y, pos_weight=pw if opts.get("pos_weight") else None, reduction=opts["reduction"]
            )
        )

    args = (jnp.asarray(z), jnp.asarray(y), jnp.asarray(pw))
    loss = BCE(
        *args[:2],
        pos_weight=args[2] if opts.get("pos_weight") else None,
        reduction=opts["reduction"],
    )
    np.testing.assert_allclose(loss, loss_t.detach().numpy(), rtol=2e-6, atol=1e-6)
    grads = jax.grad(ours, argnums=(0, 1))(*args)
    np.testing.assert_allclose(grads[0], zt.grad.numpy(), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(grads[1], yt.grad.numpy(), rtol=2e-5, atol=1e-6)


def test_sigmoid_where_is_torch_weight_zero():
    """``where`` against PyTorch's elementwise ``weight`` of 0 and 1 (sum)."""
    rng = np.random.default_rng(5)
    z = (3 * rng.standard_normal((4, 6))).astype(np.float32)
    y = rng.integers(0, 2, size=(4, 6)).astype(np.float32)
    m = rng.uniform(size=(4, 6)) < 0.7
    zt = torch.tensor(z, requires_grad=True)
    want = F.binary_cross_entropy_with_logits(
        zt, torch.tensor(y), weight=torch.tensor(m.astype(np.float32)), reduction="sum"
    )
    want.backward()
    loss, grad = jax.value_and_grad(
        lambda z: BCE(z, jnp.asarray(y), where=jnp.asarray(m), reduction="sum")
    )(jnp.asarray(z))
    np.testing.assert_allclose(loss, want.detach().numpy(), rtol=2e-6)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=2e-5, atol=1e-7)
    mean = BCE(jnp.asarray(z), jnp.asarray(y), where=jnp.asarray(m), reduction="mean")
    np.testing.assert_allclose(mean, want.detach().numpy() / m.sum(), rtol=2e-6)
