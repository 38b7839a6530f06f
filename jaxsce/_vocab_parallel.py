r"""Vocab-parallel softmax cross-entropy (Megatron-LM's algorithm) for ``jax.shard_map``.

When the vocabulary axis of the logits (or of the output layer's kernel) is
sharded over a mesh axis, each device holds ``V / S`` columns. The loss needs
two all-reduces of O(N) values: the largest logit (a max), then one sum
carrying, stacked, each shard's share of the sum of exponentials (as
:math:`r`, the sum of the non-maximal :math:`e^{z_k - m}`, so that confident
predictions keep float32's relative accuracy) and the label's logit from the
shard that owns it. The gradient with respect to the local logits then needs
no communication at all; the fused linear version adds one N x D sum for the
gradient of ``hidden``.
"""

import functools
from collections.abc import Hashable

import jax
import jax.numpy as jnp
from jax import lax

from jaxsce._linear import (
    DEFAULT_CHUNK_SIZE,
    _check_labels,
    _check_options,
    _chunk_dlogits,
    _chunk_stats,
    _combine_shards,
    _example_losses,
    _local_labels,
    _mask_losses,
    _reduce,
    _row_scale,
    _row_values,
    checked_linear_loss,
)
from jaxsce._logsumexp import compute_dtype


def _shard_layout(v_local, axis_name, labels):
    """(local labels, owned mask, full vocabulary size, local column indices)."""
    local_labels, num_classes = _local_labels(labels, v_local, axis_name)
    owned = (local_labels >= 0) & (local_labels < v_local)
    cols = lax.iota(labels.dtype, v_local)
    return local_labels, owned, num_classes, cols


def _vp_forward(logits, labels, axis_name, ignore_index, eps, zeta):
    z = logits.astype(compute_dtype(logits.dtype))
    local_labels, owned, num_classes, cols = _shard_layout(z.shape[-1], axis_name, labels)
    m_l, rest_l, zy_l, zsum_l = _chunk_stats(z, cols, local_labels, None, bool(eps))
    m, rest, m_minus_zy, zsum = _combine_shards(
        m_l, rest_l, zy_l, zsum_l, owned, axis_name, bool(eps)
    )
    row = _row_values(m, rest, m_minus_zy, labels, num_classes, ignore_index)
    loss = _example_losses(row["m"], row["rest"], m_minus_zy, zsum, num_classes, eps, zeta)
    return _mask_losses(loss, row), (m, rest, m_minus_zy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _vp_ce(logits, labels, axis_name, ignore_index, eps, zeta):
    """Per-example loss from local logits ``(N, V / S)``, the same on every shard."""
    loss, _ = _vp_forward(logits, labels, axis_name, ignore_index, eps, zeta)
    return loss


def _vp_ce_fwd(logits, labels, axis_name, ignore_index, eps, zeta):
    loss, stats = _vp_forward(logits, labels, axis_name, ignore_index, eps, zeta)
    return loss, (logits, labels, stats)


def _vp_ce_bwd(axis_name, ignore_index, eps, zeta, res, g):
    logits, labels, (m, rest, m_minus_zy) = res
    z = logits.astype(m.dtype)
    local_labels, _, num_classes, cols = _shard_layout(z.shape[-1], axis_name, labels)
    row = _row_values(m, rest, m_minus_zy, labels, num_classes, ignore_index)
    row["scale"] = _row_scale(g.astype(m.dtype), row)
    d = _chunk_dlogits(z, cols, local_labels, row, None, num_classes, eps, zeta)
    return d.astype(logits.dtype), None


_vp_ce.defvjp(_vp_ce_fwd, _vp_ce_bwd)


def vocab_parallel_softmax_cross_entropy(
    local_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    axis_name: Hashable,
    ignore_index: int | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> jax.Array:
    r"""Softmax cross-entropy of logits whose class axis is sharded over a mesh axis.

    Call it inside ``jax.shard_map`` on each device's slice of the logits:
    shard ``s`` of ``S`` holds classes ``[s V / S, (s + 1) V / S)`` (the layout
    ``PartitionSpec(..., axis_name)`` gives). ``labels`` are global class
    indices, the same on every shard. Every shard returns the same loss, equal
    to :func:`jaxsce.softmax_cross_entropy_with_integer_labels` of the full
    logits with the same options.

    .. math::
      m = \max_s m_s, \qquad
      \ell = (m - z_y) + \operatorname{log1p}\Bigl(\sum_s \sum_{k \in s} e^{z_k - m} - 1\Bigr),
      \qquad \frac{\partial \ell}{\partial z_k} = p_k - [k = y].

    Communication: the forward pass makes exactly two all-reduces of O(N)
    values (``pmax`` of the local maxima, then one ``psum`` of the stacked
    local sums and label logit); the backward pass makes none.

    Args:
      local_logits: this shard's logits, shape ``(..., V / S)``, any float dtype
        (computed in float32).
      labels: global integer labels, shape ``local_logits.shape[:-1]``.
      axis_name: the mesh axis the class axis is sharded over.
      ignore_index: as in :func:`jaxsce.linear_softmax_cross_entropy`.
      reduction: as in :func:`jaxsce.linear_softmax_cross_entropy`.
      label_smoothing: as in :func:`jaxsce.linear_softmax_cross_entropy`.
      z_loss: as in :func:`jaxsce.linear_softmax_cross_entropy`.

    Returns:
      Per-example loss (float32, shape ``labels.shape``) or its reduction,
      identical on every shard; the gradient has ``local_logits``' dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> import jaxsce
      >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
      >>> loss = jax.jit(jax.shard_map(
      ...     lambda z, y: jaxsce.vocab_parallel_softmax_cross_entropy(
      ...         z, y, axis_name="vocab"),
      ...     mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P()))
      >>> loss(jnp.zeros((2, 4)), jnp.array([0, 3]))
      Array([1.3862944, 1.3862944], dtype=float32)

    References:
      Shoeybi et al., `Megatron-LM: Training Multi-Billion Parameter Language
      Models Using Model Parallelism <https://arxiv.org/abs/1909.08053>`_, 2019.
    """
    local_logits = jnp.asarray(local_logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(local_logits.dtype, jnp.floating):
        raise TypeError(f"local_logits must have a floating dtype, got {local_logits.dtype}")
    if local_logits.ndim < 1:
        raise ValueError(f"local_logits must have a class axis, got shape {local_logits.shape}")
    _check_labels(labels, local_logits.shape[:-1], "local_logits")
    _check_options(
        "vocab_parallel_softmax_cross_entropy", reduction, label_smoothing, z_loss, ignore_index
    )
    loss = _vp_ce(
        local_logits.reshape(-1, local_logits.shape[-1]),
        labels.reshape(-1),
        axis_name,
        ignore_index,
        float(label_smoothing),
        float(z_loss),
    ).reshape(labels.shape)
    return _reduce(loss, labels, reduction, ignore_index)


def vocab_parallel_linear_softmax_cross_entropy(
    hidden: jax.typing.ArrayLike,
    local_weight: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    axis_name: Hashable,
    local_bias: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    r"""Fused linear + cross-entropy with the kernel's vocabulary axis sharded over a mesh axis.

    Call it inside ``jax.shard_map``: ``hidden`` is replicated over
    ``axis_name`` (sharded over other axes as you like), ``local_weight`` is
    this shard's ``(D, V / S)`` slice of the kernel (``PartitionSpec(None,
    axis_name)``). Each shard walks its own columns in chunks exactly as
    :func:`jaxsce.linear_softmax_cross_entropy` does, never building logits.

    .. math::
      \ell = \operatorname{CE}(x W + b, y), \qquad
      \nabla_{W_s} = X^\top (P_s - Y_s), \qquad
      \nabla_X = \textstyle\sum_s (P_s - Y_s) W_s^\top.

    Communication: the forward pass makes exactly two all-reduces of O(N)
    values; the backward pass makes one all-reduce of the ``(N, D)`` gradient
    of ``hidden``.

    Args:
      hidden: activations ``(..., D)``, the same on every shard of ``axis_name``.
      local_weight: this shard's kernel slice ``(D, V / S)``.
      labels: global integer labels, shape ``hidden.shape[:-1]``.
      axis_name: the mesh axis the vocabulary is sharded over.
      local_bias: optional ``(V / S,)`` slice of the bias.
      ignore_index, reduction, label_smoothing, z_loss, chunk_size: as in
        :func:`jaxsce.linear_softmax_cross_entropy`.

    Returns:
      Per-example loss (shape ``labels.shape``) or its reduction, identical on
      every shard.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> import jaxsce
      >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
      >>> loss = jax.jit(jax.shard_map(
      ...     lambda h, w, y: jaxsce.vocab_parallel_linear_softmax_cross_entropy(
      ...         h, w, y, axis_name="vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P()), out_specs=P()))
      >>> loss(jnp.ones((2, 3)), jnp.zeros((3, 4)), jnp.array([0, 3]))
      Array([1.3862944, 1.3862944], dtype=float32)
    """
    return checked_linear_loss(
        "vocab_parallel_linear_softmax_cross_entropy",
        hidden,
        local_weight,
        labels,
        local_bias,
        axis_name,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        chunk_size,
    )
