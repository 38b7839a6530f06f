r"""Sigmoid binary cross-entropy: independent classes, fused gradient ``sigma(z) - y``.

Where softmax makes the classes compete for one unit of probability, the
sigmoid scores each class on its own (multi-label classification). With
PyTorch's ``pos_weight`` ``w`` on the positive term and ``l = 1 + (w - 1) y``:

.. math::

  L(z, y) = -w y \log \sigma(z) - (1 - y) \log(1 - \sigma(z))
          = (1 - y) z + l \operatorname{softplus}(-z),
  \qquad \frac{\partial L}{\partial z} = l \sigma(z) - w y,

which is ``max(z, 0) - z y + log1p(e^{-|z|})`` and ``sigma(z) - y`` at ``w = 1``.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsce._checks import check_array_option
from jaxsce._logsumexp import compute_dtype

REDUCTIONS = ("none", "sum", "mean")


def _bce_values(z: jax.Array, y: jax.Array, w: jax.Array | None) -> jax.Array:
    # Each branch of `where` is smooth, so JAX differentiates this correctly at
    # z = 0 too. max(z, 0) - z y is exact (0) for a confident correct
    # prediction, which keeps the log1p term's full relative precision.
    pos = z >= 0
    minus_abs = jnp.where(pos, -z, z)
    log1p_term = jnp.log1p(jnp.exp(minus_abs))
    if w is None:
        return jnp.where(pos, z * (1 - y), -z * y) + log1p_term
    # z >= 0: (1 - y) z + l log1p(e^-z);  z < 0: -w y z + l log1p(e^z).
    lw = 1 + (w - 1) * y
    return jnp.where(pos, z * (1 - y), -z * (w * y)) + lw * log1p_term


@jax.custom_vjp
def _bce(z: jax.Array, y: jax.Array, w: jax.Array | None) -> jax.Array:
    return _bce_values(z, y, w)


def _bce_fwd(z, y, w):
    return _bce_values(z, y, w), (z, y, w)


def _bce_bwd(res, g):
    z, y, w = res
    # l sigma(z) - w y, with the part near 1 written as 1 - sigma(-|z|) so that
    # a confident correct prediction keeps its tiny gradient:
    # z >= 0: (1 - y) - l sigma(-z);  z < 0: l sigma(z) - w y.
    small = jax.nn.sigmoid(-jnp.abs(z))  # sigma(-|z|) <= 1/2, accurate
    softplus_minus_z = jnp.maximum(-z, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(z)))
    if w is None:
        grad = jnp.where(z >= 0, (1 - y) - small, small - y)
        dy = -z
        dw = None
    else:
        lw = 1 + (w - 1) * y
        grad = jnp.where(z >= 0, (1 - y) - lw * small, lw * small - w * y)
        dy = -z + (w - 1) * softplus_minus_z
        dw = g * y * softplus_minus_z
    grad = jnp.where(jnp.isfinite(z), grad, jnp.nan)  # as the loss: NaN, not hidden
    return g * grad, g * dy, dw


_bce.defvjp(_bce_fwd, _bce_bwd)


@functools.partial(jax.jit, static_argnames=("reduction", "fused"))
def _bce_impl(logits, labels, pos_weight, where, valid, *, reduction, fused):
    cd = compute_dtype(logits.dtype)
    z, y = logits.astype(cd), labels.astype(cd)
    w = None if pos_weight is None else jnp.broadcast_to(pos_weight.astype(cd), z.shape)
    if where is not None:
        z = jnp.where(where, z, 0.0)  # masked entries: no NaN from their logits
    loss = (_bce if fused else _bce_values)(z, y, w)
    if where is not None:
        loss = jnp.where(where, loss, 0.0)
    if reduction == "sum":
        loss = jnp.sum(loss)
    elif reduction == "mean":
        count = loss.size if where is None else jnp.sum(where).astype(cd)
        loss = jnp.where(count > 0, jnp.sum(loss) / jnp.maximum(count, 1), 0.0)
    if valid is not None:
        loss = jnp.where(valid, loss, jnp.nan)
    return loss


def _broadcasts_to(fname, name, x, shape):
    try:
        out = jnp.broadcast_shapes(x.shape, shape)
    except ValueError:
        out = None
    if out != tuple(shape):
        raise ValueError(
            f"{fname}: `{name}` of shape {x.shape} does not broadcast to `logits` of"
            f" shape {tuple(shape)}."
        )


def sigmoid_binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    pos_weight: ArrayLike | None = None,
    where: ArrayLike | None = None,
    reduction: str = "none",
    fused: bool = True,
) -> jax.Array:
    r"""Sigmoid binary cross-entropy, elementwise; a drop-in for optax's.

    .. math::

      L = (1 - y) z + l \operatorname{softplus}(-z), \quad l = 1 + (w - 1) y,
      \qquad \frac{\partial L}{\partial z} = l \sigma(z) - w y,

    with ``w`` the ``pos_weight`` (1 by default, where this is
    ``max(z, 0) - z y + log1p(e^{-|z|})`` with gradient ``sigma(z) - y``).
    The gradient, also with respect to ``labels`` (``-z + (w - 1)
    softplus(-z)``) and ``pos_weight`` (``y softplus(-z)``), comes from one
    ``jax.custom_vjp`` with that closed form; ``fused=False`` gives the plain
    formulation JAX differentiates itself (for forward mode).

    Args:
      logits: floating-point logits, any shape.
      labels: targets in [0, 1] (probabilities, or 0/1 of an integer or
        boolean dtype, as in optax), broadcastable to ``logits``.
      pos_weight: PyTorch's ``BCEWithLogitsLoss`` ``pos_weight``: a weight
        ``>= 0`` on the positive term, broadcastable to ``logits`` (shape
        ``(C,)`` weights each class). May be a traced array.
      where: boolean mask broadcastable to ``logits``: False entries give 0
        loss and 0 gradient, whatever their logits, and are not counted by
        ``"mean"``.
      reduction: ``"none"`` (elementwise, as optax), ``"sum"`` or ``"mean"``
        (over the entries counted, as PyTorch's default; 0 if there are none).
      fused: False for the plain formulation.

    Returns:
      The loss (shape of ``logits``, or a scalar when reduced), in at least
      float32. The gradient has the logits' dtype. NaN or ``+-inf`` logits give
      NaN (as in optax): an infinite logit is an overflow upstream, not a
      prediction. A traced ``pos_weight`` below 0 gives NaN (and an error
      under ``jax.experimental.checkify``).

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> loss = jaxsce.sigmoid_binary_cross_entropy(jnp.array([0.0, 20.0]), jnp.array([1.0, 1.0]))
      >>> print(f"{loss[0]:.4f} {loss[1]:.4e}")  # log 2, log1p(e^-20)
      0.6931 2.0612e-09
      >>> w = jnp.array(3.0)  # positives count three times: 3 log 2
      >>> print(f"{jaxsce.sigmoid_binary_cross_entropy(jnp.array(0.0), 1, pos_weight=w):.4f}")
      2.0794

    References:
      optax ``sigmoid_binary_cross_entropy``; PyTorch
      ``torch.nn.BCEWithLogitsLoss``.
    """
    fname = "sigmoid_binary_cross_entropy"
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"{fname}: `logits` must be a floating-point array, got dtype {logits.dtype}."
        )
    if not (
        jnp.issubdtype(labels.dtype, jnp.floating)
        or jnp.issubdtype(labels.dtype, jnp.integer)
        or labels.dtype == jnp.bool_
    ):
        raise TypeError(
            f"{fname}: `labels` must be real targets in [0, 1] (float, integer or bool),"
            f" got dtype {labels.dtype}."
        )
    _broadcasts_to(fname, "labels", labels, logits.shape)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"{fname}: `reduction` must be one of {REDUCTIONS}, got reduction={reduction!r}."
        )
    valid = None
    if pos_weight is not None:
        if isinstance(pos_weight, numbers.Real) and not isinstance(pos_weight, bool):
            pos_weight = float(pos_weight)
        pos_weight = jnp.asarray(pos_weight)
        if not jnp.issubdtype(pos_weight.dtype, jnp.floating):
            raise TypeError(
                f"{fname}: `pos_weight` must be floating-point, got dtype {pos_weight.dtype}."
            )
        _broadcasts_to(fname, "pos_weight", pos_weight, logits.shape)
        valid = check_array_option(
            fname, "pos_weight", pos_weight, lambda x: x >= 0, "non-negative"
        )
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            raise TypeError(f"{fname}: `where` must be a boolean array, got dtype {where.dtype}.")
        _broadcasts_to(fname, "where", where, logits.shape)
        where = jnp.broadcast_to(where, logits.shape)
    return _bce_impl(
        logits,
        jnp.broadcast_to(labels, logits.shape),
        pos_weight,
        where,
        valid,
        reduction=reduction,
        fused=bool(fused),
    )
