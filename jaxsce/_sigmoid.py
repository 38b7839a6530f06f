r"""Sigmoid binary cross-entropy: independent classes, fused gradient ``sigma(z) - y``.

Where softmax makes the classes compete for one unit of probability, the
sigmoid scores each class on its own (multi-label classification):

.. math::

  L(z, y) = -y \log \sigma(z) - (1 - y) \log(1 - \sigma(z))
          = \max(z, 0) - z y + \operatorname{log1p}(e^{-|z|}),
  \qquad \frac{\partial L}{\partial z} = \sigma(z) - y.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsce._logsumexp import compute_dtype


def _bce_values(z: jax.Array, y: jax.Array) -> jax.Array:
    # Each branch of `where` is smooth, so JAX differentiates this correctly at
    # z = 0 too. max(z, 0) - z y is exact (0) for a confident correct
    # prediction, which keeps the log1p term's full relative precision.
    pos = z >= 0
    minus_abs = jnp.where(pos, -z, z)
    return jnp.where(pos, z * (1 - y), -z * y) + jnp.log1p(jnp.exp(minus_abs))


@jax.custom_vjp
def _bce(z: jax.Array, y: jax.Array) -> jax.Array:
    return _bce_values(z, y)


def _bce_fwd(z, y):
    return _bce(z, y), (z, y)


def _bce_bwd(res, g):
    z, y = res
    # sigma(z) - y, with the part near 1 written as 1 - sigma(-|z|) so that a
    # confident correct prediction keeps its tiny gradient.
    small = jax.nn.sigmoid(-jnp.abs(z))  # sigma(-|z|) <= 1/2, accurate
    grad = jnp.where(z >= 0, (1 - y) - small, small - y)
    grad = jnp.where(jnp.isfinite(z), grad, jnp.nan)  # as the loss: NaN, not hidden
    return g * grad, g * -z


_bce.defvjp(_bce_fwd, _bce_bwd)


@functools.partial(jax.jit, static_argnames=("fused",))
def _bce_impl(logits, labels, *, fused):
    cd = compute_dtype(logits.dtype)
    z, y = logits.astype(cd), labels.astype(cd)
    return (_bce if fused else _bce_values)(z, y)


def sigmoid_binary_cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, fused: bool = True
) -> jax.Array:
    r"""Sigmoid binary cross-entropy, elementwise; a drop-in for optax's.

    .. math::

      L = \max(z, 0) - z y + \operatorname{log1p}(e^{-|z|}),
      \qquad \frac{\partial L}{\partial z} = \sigma(z) - y,
      \qquad \frac{\partial L}{\partial y} = -z.

    The gradient comes from a ``jax.custom_vjp`` with that closed form;
    ``fused=False`` gives the plain formulation JAX differentiates itself (for
    forward mode).

    Args:
      logits: floating-point logits, any shape.
      labels: floating-point targets in [0, 1] (probabilities or 0/1), the shape
        of ``logits`` (or broadcastable to it).
      fused: False for the plain formulation.

    Returns:
      The elementwise loss, shape of ``logits``, in at least float32. The
      gradient has the logits' dtype. NaN or ``+-inf`` logits give NaN (as in
      optax): an infinite logit is an overflow upstream, not a prediction.

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> loss = jaxsce.sigmoid_binary_cross_entropy(jnp.array([0.0, 20.0]), jnp.array([1.0, 1.0]))
      >>> print(f"{loss[0]:.4f} {loss[1]:.4e}")  # log 2, log1p(e^-20)
      0.6931 2.0612e-09
    """
    fname = "sigmoid_binary_cross_entropy"
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"{fname}: `logits` must be a floating-point array, got dtype {logits.dtype}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        raise TypeError(
            f"{fname}: `labels` must be floating-point targets in [0, 1], got dtype {labels.dtype}."
        )
    try:
        jnp.broadcast_shapes(labels.shape, logits.shape)
    except ValueError:
        raise ValueError(
            f"{fname}: `labels` of shape {labels.shape} do not broadcast with `logits` of"
            f" shape {logits.shape}."
        ) from None
    if jnp.broadcast_shapes(labels.shape, logits.shape) != logits.shape:
        raise ValueError(
            f"{fname}: `labels` of shape {labels.shape} would broadcast `logits` of shape"
            f" {logits.shape} to a larger shape."
        )
    return _bce_impl(logits, jnp.broadcast_to(labels, logits.shape), fused=fused)
