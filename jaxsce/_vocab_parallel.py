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
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsce._linear import (
    DEFAULT_CHUNK_SIZE,
    _cast_cotangents,
    _check_bound_in_backward,
    _check_labels,
    _check_options,
    _chunk_dlogits,
    _chunk_stats,
    _finish_per_example,
    _layout,
    _losses_from_local,
    _on,
    _outputs,
    _per_device,
    _resolve,
    _restore_rows,
    _saved_stats,
    _scalar_option_grads,
    _set_scales,
    _softcap,
    _softcap_dcap,
    _softcap_grad,
    _Static,
    _static_and_operands,
    _sum_to,
    _vma,
    checked_linear_loss,
)
from jaxsce._logsumexp import compute_dtype


def _vp_forward(logits, labels, st: _Static):
    z_raw = logits.astype(compute_dtype(logits.dtype))
    z = _softcap(z_raw, st.logit_softcap)
    lay = _layout(z[:, :0], z, None, labels, st)
    cols = lax.iota(jnp.int32, z.shape[-1])
    with_gap = _on(st.label_smoothing)
    local = _chunk_stats(z, cols, lay.local, None, with_gap)
    loss, row = _losses_from_local(local, z.shape[-1], lay, st, with_gap)
    return loss, row, lay


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _vp_ce(logits, labels, opts, st: _Static, with_aux: bool):
    """Per-example outputs from local logits ``(N, V / S)``, the same on every shard.

    ``opts``: the options ``st.arrays`` names, as scalar arrays (differentiable).
    """
    st = _resolve(st, opts, compute_dtype(logits.dtype))
    loss, row, _ = _vp_forward(logits, labels, st)
    return _outputs(loss, row, with_aux)


def _vp_ce_fwd(logits, labels, opts, st, with_aux):
    loss, row, _ = _vp_forward(logits, labels, _resolve(st, opts, compute_dtype(logits.dtype)))
    return _outputs(loss, row, with_aux), (logits, labels, opts, _saved_stats(row, st))


def _vp_ce_bwd(st_static, with_aux, res, cts):
    logits, labels, opts, stats = res
    _check_bound_in_backward(st_static.axis_name)
    acc = compute_dtype(logits.dtype)
    st = _resolve(st_static, opts, acc)
    z_raw = logits.astype(acc)
    z = _softcap(z_raw, st.logit_softcap)
    lay = _layout(z[:, :0], z, None, labels, st)
    row = _restore_rows(stats, lay)
    per_device = _per_device(st.axis_name)
    # The options' per-example cotangents use each device's own loss cotangent.
    opt_grads = _scalar_option_grads(row, cts[0].astype(acc), st, lay.num_classes)
    cts = [lax.psum(g, st.axis_name) if per_device else g for g in cts]
    _set_scales(row, cts, lay, with_aux, acc)
    cols = lax.iota(jnp.int32, z.shape[-1])
    d = _chunk_dlogits(
        z, cols, lay.local, row, None, lay.num_classes, st.label_smoothing, st.z_loss
    )
    if "logit_softcap" in st.arrays:
        d_safe = jnp.where(lay.ignored[:, None], 0.0, d)  # NaN logits in ignored rows
        opt_grads["logit_softcap"] = _softcap_dcap(d_safe, z_raw, st.logit_softcap)
    d = _softcap_grad(d, z_raw, st.logit_softcap)
    d = jnp.where(lay.ignored[:, None], 0.0, d)  # NaN logits in an ignored row reach nothing
    d_logits = _sum_to(d, _vma(logits), per_device).astype(logits.dtype)
    return d_logits, None, _cast_cotangents(opt_grads, opts, st_static, per_device)


_vp_ce.defvjp(_vp_ce_fwd, _vp_ce_bwd)


@functools.partial(jax.jit, static_argnames=("st", "reduction", "return_aux"))
def _vp_loss(logits, labels, opts, valid, st, reduction, return_aux):
    z = logits.reshape(labels.size, logits.shape[-1])
    outs = _vp_ce(z, labels.reshape(labels.size), opts, st, return_aux)
    return _finish_per_example(outs, labels, valid, reduction, st.ignore_index, return_aux)


def vocab_parallel_softmax_cross_entropy(
    local_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    axis_name: Hashable,
    ignore_index: int | None = None,
    reduction: str = "none",
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    logit_softcap: float | jax.typing.ArrayLike | None = None,
    return_aux: bool = False,
) -> Any:
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
      label_smoothing: as in :func:`jaxsce.linear_softmax_cross_entropy`: a
        number, or a scalar array (traced ones too) with its true gradient.
      z_loss: as ``label_smoothing``.
      logit_softcap: as ``label_smoothing``, or None.
      return_aux: as in :func:`jaxsce.linear_softmax_cross_entropy`.

    Returns:
      Per-example loss (float32, shape ``labels.shape``) or its reduction,
      identical on every shard; the gradient has ``local_logits``' dtype.
      With ``return_aux=True``, ``(loss, LinearCrossEntropyAux)``.

    Meshes: ``labels`` and the logits' rows may be sharded over other mesh
    axes (a data x vocab mesh). Under ``shard_map(..., check_vma=False)`` the
    backward pass sums the loss's cotangent over ``axis_name`` (one O(N)
    all-reduce), as autodiff of the forward ``psum`` would. Under
    ``jax.vmap(axis_name=...)`` values work; gradients raise a ValueError.

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
    fname = "vocab_parallel_softmax_cross_entropy"
    ignore_index, _, numeric = _check_options(
        fname,
        reduction,
        label_smoothing,
        z_loss,
        ignore_index,
        logit_softcap,
        return_aux=return_aux,
    )
    local_logits = jnp.asarray(local_logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(local_logits.dtype, jnp.floating):
        raise TypeError(
            f"{fname}: `local_logits` must have a floating dtype, got {local_logits.dtype}."
        )
    if local_logits.ndim < 1 or local_logits.shape[-1] == 0:
        raise ValueError(
            f"{fname}: `local_logits` must have a non-empty class axis, got shape"
            f" {local_logits.shape}."
        )
    _check_labels(fname, labels, local_logits.shape[:-1], "local_logits")
    st, opts, valid = _static_and_operands(DEFAULT_CHUNK_SIZE, axis_name, ignore_index, numeric)
    return _vp_loss(local_logits, labels, opts, valid, st, reduction, return_aux)


def vocab_parallel_linear_softmax_cross_entropy(
    hidden: jax.typing.ArrayLike,
    local_weight: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    axis_name: Hashable,
    local_bias: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "none",
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    logit_softcap: float | jax.typing.ArrayLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    method: str = "auto",
    return_aux: bool = False,
) -> Any:
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
      ignore_index, reduction, label_smoothing, z_loss, logit_softcap, chunk_size,
        method, return_aux: as in :func:`jaxsce.linear_softmax_cross_entropy`
        (``"precompute"`` adds two O(N) all-reduces per block of rows;
        ``label_smoothing``, ``z_loss`` and ``logit_softcap`` may be scalar
        arrays, traced ones too, with their true gradients).

    Returns:
      Per-example loss (shape ``labels.shape``) or its reduction, identical on
      every shard; with ``return_aux=True``, ``(loss, LinearCrossEntropyAux)``.

    Meshes: ``hidden`` and ``labels`` may be sharded over other mesh axes (a
    data x vocab mesh); the weight gradient is then summed over them. Under
    ``shard_map(..., check_vma=False)`` the backward pass sums the loss's
    cotangent over ``axis_name`` instead of the ``hidden`` gradient.

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
        logit_softcap,
        chunk_size,
        method,
        return_aux,
    )
