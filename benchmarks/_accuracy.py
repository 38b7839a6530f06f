"""Accuracy in ulp of loss and gradient on confident predictions, against mpmath.

Each row has 1000 float32 logits drawn from a standard normal, then the label
logit is set a ``margin`` above the largest other logit (margins 0..40). The
reference loss ``log(sum_j exp(x_j - x_y))`` and gradient ``softmax(x) - e_y``
are computed with mpmath at 50 significant digits from the exact float32
inputs; the label entry of the gradient is ``-sum_{j != y} softmax(x)_j``, the
number a confident prediction's gradient is made of.

The same rows measure ``softmax`` (jaxsce against ``jax.nn``): every entry
``p_k = exp(x_k) / sum_j exp(x_j)`` against mpmath.

The error of a float32 result ``c`` against a reference ``r`` is
``|c - r| / ulp(r)``, with ``ulp(r)`` the spacing of float32 at ``r``.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import mpmath
import numpy as np

import jaxsce
from benchmarks import _libs

CLASSES = 1000
DIGITS = 50

# logits (B, V) float32, labels (B,) -> (per-example losses (B,), gradient of their sum (B, V))
LossAndGrad = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class AccuracyRow:
    """Largest ulp errors of one library over all margins."""

    library: str
    loss: float
    grad_label: float
    grad_other: float
    loss_by_margin: dict[float, float]


def confident_logits(margins: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits (len(margins), CLASSES), the label logit ``margin`` above the rest."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((len(margins), CLASSES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, len(margins))
    for row, (label, margin) in enumerate(zip(labels, margins)):
        others = np.delete(logits[row], label)
        logits[row, label] = np.float32(others.max() + np.float32(margin))
    return logits, labels


def reference(logits: np.ndarray, label: int) -> tuple[mpmath.mpf, list[mpmath.mpf]]:
    """Loss and gradient of one row at ``DIGITS`` digits."""
    with mpmath.workdps(DIGITS):
        x = [mpmath.mpf(float(v)) for v in logits]
        e = [mpmath.exp(xj - x[label]) for xj in x]
        total = mpmath.fsum(e)
        grad = [ej / total for ej in e]
        grad[label] = -mpmath.fsum(e[:label] + e[label + 1 :]) / total
        return mpmath.log(total), grad


def ulp_error(computed: np.ndarray, ref: list[mpmath.mpf]) -> np.ndarray:
    """``|computed - ref| / ulp_float32(ref)`` elementwise."""
    ref32 = np.array([float(r) for r in ref], np.float32)
    with mpmath.workdps(DIGITS):
        diff = np.array([float(abs(mpmath.mpf(float(c)) - r)) for c, r in zip(computed, ref)])
    return diff / np.spacing(np.abs(ref32)).astype(np.float64)


def jax_loss_and_grad(loss: _libs.Loss) -> LossAndGrad:
    """Per-example losses and the gradient of their sum, jitted."""

    @jax.jit
    def f(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        losses, pullback = jax.vjp(lambda x: loss(x, labels), logits)
        (grad,) = pullback(jnp.ones_like(losses))
        return losses, grad

    return lambda x, y: tuple(np.asarray(a) for a in f(jnp.asarray(x), jnp.asarray(y)))


def torch_loss_and_grad(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's per-example ``cross_entropy`` and the gradient of their sum."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(logits.copy()).requires_grad_()
    losses = F.cross_entropy(x, torch.from_numpy(labels).long(), reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), x)
    return losses.detach().numpy(), grad.numpy()


def libraries(with_torch: bool = True) -> dict[str, LossAndGrad]:
    """name -> loss-and-gradient function of every library to compare."""
    found: dict[str, LossAndGrad] = {
        name: jax_loss_and_grad(loss) for name, loss in _libs.jax_losses().items()
    }
    if with_torch and _libs.torch_version() is not None:
        found["PyTorch"] = torch_loss_and_grad
    return found


def measure(
    margins: np.ndarray,
    with_torch: bool = True,
    candidates: dict[str, LossAndGrad] | None = None,
) -> list[AccuracyRow]:
    """One row per library (default: :func:`libraries`): its largest ulp errors."""
    logits, labels = confident_logits(margins)
    refs = [reference(logits[i], int(labels[i])) for i in range(len(margins))]
    rows = []
    for name, fn in (candidates or libraries(with_torch)).items():
        losses, grads = fn(logits, labels)
        loss_err = ulp_error(losses.astype(np.float32), [r[0] for r in refs])
        label_err, other_err = [], []
        for i, (_, grad_ref) in enumerate(refs):
            err = ulp_error(grads[i].astype(np.float32), grad_ref)
            label_err.append(err[labels[i]])
            other_err.append(np.delete(err, labels[i]).max())
        rows.append(
            AccuracyRow(
                library=name,
                loss=float(loss_err.max()),
                grad_label=float(max(label_err)),
                grad_other=float(max(other_err)),
                loss_by_margin={float(m): float(e) for m, e in zip(margins, loss_err)},
            )
        )
    return rows


@dataclasses.dataclass
class SoftmaxAccuracyRow:
    """Ulp errors of one ``softmax`` over every entry of the confident rows."""

    library: str
    largest: float
    mean: float


def softmax_reference(logits: np.ndarray) -> list[mpmath.mpf]:
    """``softmax`` of one row at ``DIGITS`` digits."""
    with mpmath.workdps(DIGITS):
        x = [mpmath.mpf(float(v)) for v in logits]
        top = max(x)
        e = [mpmath.exp(xj - top) for xj in x]
        total = mpmath.fsum(e)
        return [ej / total for ej in e]


def measure_softmax(
    margins: np.ndarray,
    candidates: dict[str, Callable[[jax.Array], jax.Array]] | None = None,
) -> list[SoftmaxAccuracyRow]:
    """One row per ``softmax`` (default: jaxsce's and ``jax.nn``'s) on :func:`confident_logits`."""
    candidates = candidates or {"jaxsce": jaxsce.softmax, "jax.nn": jax.nn.softmax}
    logits, _ = confident_logits(margins)
    refs = [softmax_reference(row) for row in logits]
    rows = []
    for name, fn in candidates.items():
        p = np.asarray(jax.jit(fn)(jnp.asarray(logits)), np.float32)
        err = np.concatenate([ulp_error(p[i], refs[i]) for i in range(len(margins))])
        rows.append(SoftmaxAccuracyRow(name, float(err.max()), float(err.mean())))
    return rows
