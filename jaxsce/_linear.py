r"""Fused linear layer + softmax cross-entropy that never builds the N x V logits.

The logits :math:`Z = X W + b` of a language model's output layer have one row
per token and one column per vocabulary entry. For :math:`N` tokens and a
vocabulary of :math:`V` entries they, and their gradient, dominate training
memory. Here the vocabulary is walked in chunks of ``chunk_size`` columns:

* forward: an online log-sum-exp over the chunks keeps, per example, the
  largest logit :math:`m` and the rest :math:`r = \sum_{k \ne \arg\max} e^{z_k - m}`
  (so :math:`\operatorname{lse} = m + \operatorname{log1p}(r)`), and the label's
  logit; only these O(N) values are saved for the backward pass;
* backward: each chunk's logits are recomputed, :math:`P - Y` is formed for
  the chunk, :math:`\nabla_X \mathrel{+}= (P - Y) W_c^\top` accumulates in
  float32 and :math:`\nabla_{W_c} = X^\top (P - Y)` is written into its slot
  of the weight gradient (seed 002: :math:`\nabla_\theta = X^\top (Z - I_y)`).

The same custom rule serves the vocab-parallel version
(:mod:`jaxsce._vocab_parallel`), where every device holds a slice of the
vocabulary: it then adds the two O(N) all-reduces of Megatron-LM's algorithm
to the forward pass and one N x D all-reduce to the backward pass.
"""

import functools
from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsce._cross_entropy import _check_options as check_loss_options
from jaxsce._logsumexp import compute_dtype, exp_shifted, mask_logits, max_and_rest

# Default number of vocabulary columns per chunk. The temporaries of one step
# are a few (N, chunk_size) float32 arrays: at N = 2048, D = 1024 XLA's CPU
# backend reports 40 MiB, whatever V is (32 MiB at 1024 columns, 64 MiB at
# 4096). 2048 is the widest of these under 64 MB; `python -m
# benchmarks.large_vocab` times all three (within a few percent of each other,
# wider chunks a little faster).
DEFAULT_CHUNK_SIZE = 2048


# --------------------------------------------------------------------------
# Per-chunk maths, shared with the vocab-parallel cross-entropy.
# --------------------------------------------------------------------------


def _merge_max_and_rest(
    m: jax.Array, rest: jax.Array, m_c: jax.Array, rest_c: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""Merges the (max, rest) of two disjoint sets of logits.

    .. math::
      (m, r) \oplus (m_c, r_c) =
      \begin{cases}
        (m_c,\ r_c + (1 + r)\, e^{m - m_c}) & m_c > m \\
        (m,\ r + (1 + r_c)\, e^{m_c - m}) & \text{otherwise}
      \end{cases}

    The smaller side's factor is 0 when it is :math:`-\infty` (no NaN from
    :math:`-\infty - (-\infty)`).
    """
    chunk_wins = m_c > m
    low = jnp.where(chunk_wins, m, m_c)
    high = jnp.where(chunk_wins, m_c, m)
    factor = jnp.where(low == -jnp.inf, jnp.zeros_like(low), exp_shifted(low, high))
    rest_new = jnp.where(chunk_wins, rest_c + (1.0 + rest) * factor, rest + (1.0 + rest_c) * factor)
    return high, rest_new


def _chunk_stats(
    z: jax.Array, cols: jax.Array, labels: jax.Array, valid: jax.Array | None, with_sum: bool
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(max, rest, label logit or 0, sum of logits or 0) of one chunk of logits ``(N, C)``.

    The max is ``-inf`` in rows with no finite logit in the chunk (rest 0).
    """
    s = max_and_rest(mask_logits(z, None if valid is None else valid[None, :]))
    m_c, rest_c = jnp.where(s.empty, -jnp.inf, s.shift), s.rest
    is_label = cols[None, :] == labels[:, None]
    if valid is not None:
        is_label = is_label & valid[None, :]
    zy_c = jnp.sum(jnp.where(is_label, z, 0.0), axis=-1)
    if with_sum:
        z_valid = z if valid is None else jnp.where(valid[None, :], z, 0.0)
        zsum_c = jnp.sum(z_valid, axis=-1)
    else:
        zsum_c = jnp.zeros_like(m_c)
    return m_c, rest_c, zy_c, zsum_c


def _chunk_dlogits(
    z: jax.Array,
    cols: jax.Array,
    labels: jax.Array,
    row: dict[str, jax.Array],
    valid: jax.Array | None,
    num_classes: int,
    label_smoothing: float,
    z_loss: float,
) -> jax.Array:
    r"""Gradient of the per-example losses with respect to one chunk of logits.

    .. math::
      \frac{\partial \ell}{\partial z_k} = g \bigl(p_k (1 + 2 \zeta \operatorname{lse})
      - q_k\bigr), \qquad q = (1 - \varepsilon)\, e_y + \varepsilon / V,

    written as :math:`(p_k - [k = y]) + 2\zeta\operatorname{lse}\,p_k
    + \varepsilon([k = y] - 1/V)`, where :math:`p_y - 1 = -r / (1 + r)` when
    the label holds the largest logit (no cancellation for confident
    predictions).

    Args:
      z: chunk logits ``(N, C)`` in the accumulation dtype.
      cols: vocabulary index of each column ``(C,)``, same numbering as ``labels``.
      labels: ``(N,)``.
      row: per-example values ``m``, ``rest``, ``lse``, ``y_is_max``, ``scale``
        (cotangent, 0 for examples that give no gradient, NaN for bad labels).
      valid: ``(C,)`` mask of the columns this chunk owns, or None for all.
      num_classes: full vocabulary size ``V``.
      label_smoothing: ``eps``.
      z_loss: ``zeta``.

    Returns:
      ``(N, C)`` gradient in the accumulation dtype (0 in columns not owned).
    """
    m, rest, y_is_max = row["m"], row["rest"], row["y_is_max"]
    inv = 1.0 / (1.0 + rest)
    is_label = cols[None, :] == labels[:, None]
    label_top = is_label & y_is_max[:, None]
    p = jnp.where(label_top, inv[:, None], exp_shifted(z, m[:, None]) * inv[:, None])
    p_minus_y = jnp.where(
        is_label, jnp.where(y_is_max[:, None], (-rest * inv)[:, None], p - 1.0), p
    )
    d = p_minus_y
    if z_loss:
        d = d + (2.0 * z_loss * row["lse"])[:, None] * p
    if label_smoothing:
        d = d + label_smoothing * (is_label.astype(z.dtype) - 1.0 / num_classes)
    d = d * row["scale"][:, None]
    if valid is not None:
        d = jnp.where(valid[None, :], d, 0.0)
    return d


def _example_losses(
    m: jax.Array,
    rest: jax.Array,
    m_minus_zy: jax.Array,
    zsum: jax.Array,
    num_classes: int,
    label_smoothing: float,
    z_loss: float,
) -> jax.Array:
    r"""Per-example loss from the (max, rest) statistics.

    .. math::
      \ell = (1 - \varepsilon)\bigl((m - z_y) + \operatorname{log1p}(r)\bigr)
      + \varepsilon\bigl(m - \bar z + \operatorname{log1p}(r)\bigr)
      + \zeta\,(m + \operatorname{log1p}(r))^2
    """
    log1p_rest = jnp.log1p(rest)
    loss = m_minus_zy + log1p_rest
    if label_smoothing:
        smooth = (m - zsum / num_classes) + log1p_rest
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    if z_loss:
        loss = loss + z_loss * jnp.square(m + log1p_rest)
    return loss


def _combine_shards(
    m_l: jax.Array,
    rest_l: jax.Array,
    zy_l: jax.Array,
    zsum_l: jax.Array,
    owned: jax.Array,
    axis_name: Hashable | None,
    with_sum: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""Global (max, rest, m - z_y, sum of logits) from each shard's local values.

    Without ``axis_name`` the local values are the global ones. With it
    (Megatron-LM's algorithm), exactly two all-reduces of O(N): a max, then a
    single sum of the stacked

    .. math::
      b_s = \begin{cases} r_s & m_s = m \\ (1 + r_s)\, e^{m_s - m} & m_s < m \end{cases},
      \quad a_s = [m_s = m], \quad [y \in s]\,(m - z_y), \quad \textstyle\sum z,

    giving :math:`r = \sum_s b_s + (\sum_s a_s - 1)` with the ``- 1`` exact.
    """
    if axis_name is None:
        m_minus_zy = jnp.where(owned, m_l - zy_l, 0.0)
        return m_l, rest_l, m_minus_zy, zsum_l
    m = lax.pmax(m_l, axis_name)
    top = m_l == m
    b = jnp.where(top, rest_l, (1.0 + rest_l) * exp_shifted(m_l, m))
    a = top.astype(rest_l.dtype)
    m_minus_zy = jnp.where(owned, m - zy_l, 0.0)
    parts = [b, a, m_minus_zy] + ([zsum_l] if with_sum else [])
    total = lax.psum(jnp.stack(parts), axis_name)
    rest = total[0] + (total[1] - 1.0)
    zsum = total[3] if with_sum else jnp.zeros_like(m)
    return m, rest, total[2], zsum


def _row_values(
    m: jax.Array,
    rest: jax.Array,
    m_minus_zy: jax.Array,
    labels: jax.Array,
    num_classes: int,
    ignore_index: int | None,
) -> dict[str, Any]:
    """Per-example masks and NaN-safe statistics used by the loss and the gradient."""
    ignored = jnp.zeros(labels.shape, bool) if ignore_index is None else labels == ignore_index
    bad = ((labels < 0) | (labels >= num_classes)) & ~ignored
    empty = m == -jnp.inf  # every logit is -inf: loss +inf, gradient 0
    m_safe = jnp.where(empty, jnp.zeros_like(m), m)
    rest_safe = jnp.where(empty, jnp.zeros_like(rest), rest)
    return {
        "ignored": ignored,
        "bad": bad,
        "empty": empty,
        "m": m_safe,
        "rest": rest_safe,
        "lse": m_safe + jnp.log1p(rest_safe),
        "y_is_max": m_minus_zy == 0.0,
    }


def _mask_losses(loss: jax.Array, row: dict[str, Any]) -> jax.Array:
    loss = jnp.where(row["empty"], jnp.inf, loss)
    loss = jnp.where(row["ignored"], 0.0, loss)
    return jnp.where(row["bad"], jnp.nan, loss)


def _row_scale(g: jax.Array, row: dict[str, Any]) -> jax.Array:
    scale = jnp.where(row["ignored"] | row["empty"], 0.0, g)
    return jnp.where(row["bad"], jnp.nan, scale)


# --------------------------------------------------------------------------
# The chunk loop.
# --------------------------------------------------------------------------


def _chunking(v: int, chunk_size: int) -> tuple[int, int, bool]:
    """(columns per chunk, number of chunks, whether the last chunk overlaps)."""
    c = min(chunk_size, v)
    return c, -(-v // c), v % c != 0


def _chunk_logits(
    hidden: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None,
    i: jax.Array,
    c: int,
    overlaps: bool,
    col_dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array, jax.Array]:
    """Logits of chunk ``i``: columns ``[start, start + c)`` of ``hidden @ weight + bias``.

    The last chunk of a vocabulary that ``c`` does not divide starts at
    ``V - c`` instead, overlapping its predecessor; ``valid`` marks the
    columns it owns (those at or after ``i * c``). Nothing is padded or copied.

    Returns:
      ``(z, cols, valid, start, w)``: ``z`` of shape ``(N, c)`` in float32 (or
      wider), the weight chunk ``w`` in ``hidden``'s dtype.
    """
    v = weight.shape[1]
    acc = compute_dtype(hidden.dtype)
    start = jnp.minimum(i * c, v - c)
    w = lax.dynamic_slice_in_dim(weight, start, c, axis=1).astype(hidden.dtype)
    z = lax.dot_general(hidden, w, (((1,), (0,)), ((), ())), preferred_element_type=acc)
    if bias is not None:
        z = z + lax.dynamic_slice_in_dim(bias, start, c).astype(acc)[None, :]
    cols = start.astype(col_dtype) + lax.iota(col_dtype, c)
    valid = cols >= (i * c).astype(col_dtype) if overlaps else None
    return z, cols, valid, start, w


def _varying(x: Any, axis_name: Hashable | None) -> Any:
    """Marks a loop carry as varying over ``axis_name`` (inside shard_map)."""
    if axis_name is None:
        return x
    return jax.tree_util.tree_map(lambda a: lax.pcast(a, axis_name, to="varying"), x)


def _local_stats(hidden, weight, bias, local_labels, chunk_size, with_sum, axis_name):
    """Online (max, rest, label logit, sum of logits) over the chunks of ``weight``."""
    n = hidden.shape[0]
    c, n_chunks, overlaps = _chunking(weight.shape[1], chunk_size)
    acc = compute_dtype(hidden.dtype)

    def body(i, carry):
        m, rest, zy, zsum = carry
        z, cols, valid, _, _ = _chunk_logits(
            hidden, weight, bias, i, c, overlaps, local_labels.dtype
        )
        m_c, rest_c, zy_c, zsum_c = _chunk_stats(z, cols, local_labels, valid, with_sum)
        m, rest = _merge_max_and_rest(m, rest, m_c, rest_c)
        return m, rest, zy + zy_c, zsum + zsum_c

    init = (
        jnp.full((n,), -jnp.inf, acc),
        jnp.zeros((n,), acc),
        jnp.zeros((n,), acc),
        jnp.zeros((n,), acc),
    )
    return lax.fori_loop(0, n_chunks, body, _varying(init, axis_name))


def _local_grads(
    hidden, weight, bias, local_labels, row, chunk_size, num_classes, eps, zeta, axis_name
):
    """Gradients for ``hidden`` (float32 partial sum), ``weight`` and ``bias`` by chunks."""
    c, n_chunks, overlaps = _chunking(weight.shape[1], chunk_size)
    acc = compute_dtype(hidden.dtype)

    def body(i, carry):
        dh, dw_buf, db_buf = carry
        z, cols, valid, start, w = _chunk_logits(
            hidden, weight, bias, i, c, overlaps, local_labels.dtype
        )
        d = _chunk_dlogits(z, cols, local_labels, row, valid, num_classes, eps, zeta)
        d_lo = d.astype(hidden.dtype)
        dh = dh + lax.dot_general(d_lo, w, (((1,), (1,)), ((), ())), preferred_element_type=acc)
        dw = lax.dot_general(hidden, d_lo, (((0,), (0,)), ((), ())), preferred_element_type=acc)
        dw_buf = _write_chunk(dw_buf, dw.astype(dw_buf.dtype), start, valid, axis=1)
        if db_buf is not None:
            db = jnp.sum(d, axis=0).astype(db_buf.dtype)
            db_buf = _write_chunk(db_buf, db, start, valid, axis=0)
        return dh, dw_buf, db_buf

    init = (
        jnp.zeros(hidden.shape, acc),
        jnp.zeros(weight.shape, weight.dtype),
        None if bias is None else jnp.zeros(bias.shape, bias.dtype),
    )
    return lax.fori_loop(0, n_chunks, body, _varying(init, axis_name))


def _write_chunk(buf, chunk, start, valid, axis):
    """Writes ``chunk`` into ``buf`` at ``start`` along ``axis``, keeping columns not owned."""
    if valid is not None:
        old = lax.dynamic_slice_in_dim(buf, start, chunk.shape[axis], axis=axis)
        mask = valid if axis == 0 else valid[None, :]
        chunk = jnp.where(mask, chunk, old)
    return lax.dynamic_update_slice_in_dim(buf, chunk, start, axis=axis)


# --------------------------------------------------------------------------
# The custom rule.
# --------------------------------------------------------------------------


def _local_labels(labels, v_local, axis_name):
    """Labels numbered from this shard's first class, and the full vocabulary size.

    Shard ``s`` of the mesh axis ``axis_name`` holds classes
    ``[s * v_local, (s + 1) * v_local)``; without ``axis_name`` there is one shard.
    """
    if axis_name is None:
        return labels, v_local
    offset = lax.axis_index(axis_name) * v_local
    return labels - offset.astype(labels.dtype), v_local * lax.axis_size(axis_name)


def _forward(hidden, weight, bias, labels, chunk_size, axis_name, ignore_index, eps, zeta):
    """Per-example losses and the per-example values the backward pass keeps."""
    v_local = weight.shape[1]
    local_labels, num_classes = _local_labels(labels, v_local, axis_name)
    owned = (local_labels >= 0) & (local_labels < v_local)
    with_sum = bool(eps)
    m_l, rest_l, zy_l, zsum_l = _local_stats(
        hidden, weight, bias, local_labels, chunk_size, with_sum, axis_name
    )
    m, rest, m_minus_zy, zsum = _combine_shards(
        m_l, rest_l, zy_l, zsum_l, owned, axis_name, with_sum
    )
    row = _row_values(m, rest, m_minus_zy, labels, num_classes, ignore_index)
    loss = _example_losses(row["m"], row["rest"], m_minus_zy, zsum, num_classes, eps, zeta)
    return _mask_losses(loss, row), (m, rest, m_minus_zy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _linear_ce(hidden, weight, bias, labels, chunk_size, axis_name, ignore_index, eps, zeta):
    """Per-example cross-entropy of ``hidden @ weight + bias``; ``hidden`` is ``(N, D)``."""
    loss, _ = _forward(hidden, weight, bias, labels, chunk_size, axis_name, ignore_index, eps, zeta)
    return loss


def _linear_ce_fwd(hidden, weight, bias, labels, chunk_size, axis_name, ignore_index, eps, zeta):
    loss, stats = _forward(
        hidden, weight, bias, labels, chunk_size, axis_name, ignore_index, eps, zeta
    )
    return loss, (hidden, weight, bias, labels, stats)


def _linear_ce_bwd(chunk_size, axis_name, ignore_index, eps, zeta, res, g):
    hidden, weight, bias, labels, (m, rest, m_minus_zy) = res
    v_local = weight.shape[1]
    local_labels, num_classes = _local_labels(labels, v_local, axis_name)
    row = _row_values(m, rest, m_minus_zy, labels, num_classes, ignore_index)
    row["scale"] = _row_scale(g.astype(m.dtype), row)
    dh, dw, db = _local_grads(
        hidden, weight, bias, local_labels, row, chunk_size, num_classes, eps, zeta, axis_name
    )
    if axis_name is not None:
        dh = lax.psum(dh, axis_name)
    return dh.astype(hidden.dtype), dw, db, None


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


# --------------------------------------------------------------------------
# Argument checking and reductions, shared with the vocab-parallel module.
# --------------------------------------------------------------------------


def _check_options(fname, reduction, label_smoothing, z_loss, ignore_index):
    """Raises ValueError naming a bad option: the core loss's checks, plus ``ignore_index``."""
    check_loss_options(fname, reduction, None, label_smoothing, "torch", z_loss)
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise ValueError(f"ignore_index must be an int or None, got ignore_index={ignore_index!r}")


def _check_labels(labels, batch_shape, name):
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != tuple(batch_shape):
        raise ValueError(
            f"labels shape {labels.shape} does not match the {name} shape "
            f"without its last axis {tuple(batch_shape)}"
        )


def _reduce(loss, labels, reduction, ignore_index):
    """Applies ``reduction``; "mean" divides by the number of non-ignored examples."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    counted = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    total = jnp.sum(jnp.where(counted, loss, 0.0))
    count = jnp.sum(counted).astype(loss.dtype)
    # Every example ignored: 0 with a zero gradient, as the core loss (PyTorch gives NaN).
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


# --------------------------------------------------------------------------
# Public function.
# --------------------------------------------------------------------------


@functools.partial(
    jax.jit,
    static_argnames=(
        "ignore_index",
        "reduction",
        "label_smoothing",
        "z_loss",
        "chunk_size",
    ),
)
def linear_softmax_cross_entropy(
    hidden: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "none",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    r"""Softmax cross-entropy of a linear layer's output, without materialising the logits.

    Equals ``softmax_cross_entropy_with_integer_labels(hidden @ weight + bias, labels)``
    with the options below, but walks the vocabulary in chunks of ``chunk_size``
    columns so that neither the ``(N, V)`` logits nor their gradient ever exist:
    the forward pass keeps O(N) values per example, the backward pass
    recomputes each chunk's logits.

    .. math::
      z = x W + b, \qquad
      \ell = (1 - \varepsilon)\,(\operatorname{lse}(z) - z_y)
        + \varepsilon\,(\operatorname{lse}(z) - \tfrac{1}{V}\textstyle\sum_k z_k)
        + \zeta \operatorname{lse}(z)^2,

    .. math::
      \frac{\partial \ell}{\partial z} = p\,(1 + 2\zeta\operatorname{lse}(z)) - q,
      \quad q = (1 - \varepsilon)\,e_y + \varepsilon / V, \qquad
      \nabla_W = X^\top \frac{\partial \ell}{\partial Z}, \quad
      \nabla_X = \frac{\partial \ell}{\partial Z} W^\top,

    with :math:`\operatorname{lse}(z) = m + \operatorname{log1p}(r)`, :math:`m`
    the largest logit and :math:`r` the sum of the others' :math:`e^{z_k - m}`,
    so that a confident prediction's loss :math:`\operatorname{log1p}(r)` and
    its label gradient :math:`-r / (1 + r)` keep float32's relative accuracy.

    Edge behaviour: examples whose label equals ``ignore_index`` give loss 0
    and gradient 0; any other label outside ``[0, V)`` gives a NaN loss (and
    NaN gradients), never a wrapped index (:func:`jaxsce.check_labels` raises
    an error naming it instead). A row whose logits are all
    ``-inf`` (e.g. a ``-inf`` bias everywhere) gives loss ``+inf`` and
    gradient 0; a label whose logit is ``-inf`` gives ``+inf``. NaN or
    ``+inf`` logits give NaN.

    Dtypes: each weight chunk is cast to ``hidden``'s dtype for the matrix
    products (as flax's ``Dense(dtype=...)`` does), the logits and all
    statistics are float32 (float64 for float64 inputs), each chunk's
    :math:`p - q` is cast to ``hidden``'s dtype before the backward products,
    and the ``hidden`` gradient accumulates in float32. The loss is float32
    (float64 for float64 inputs); gradients have their input's dtype.

    Args:
      hidden: activations of shape ``(..., D)``.
      weight: kernel of shape ``(D, V)`` (flax ``Dense`` convention).
      labels: integer class indices of shape ``hidden.shape[:-1]``.
      bias: optional bias of shape ``(V,)``.
      ignore_index: label value whose examples count for nothing (PyTorch's
        ``ignore_index``, for example ``-100``); None (default) ignores none.
      reduction: ``"none"`` (per-example losses, shape ``labels.shape``),
        ``"sum"``, or ``"mean"`` (sum divided by the number of examples whose
        label is not ``ignore_index``; 0 with a zero gradient when every
        example is ignored, where PyTorch gives NaN).
      label_smoothing: ``eps`` in ``[0, 1]``, PyTorch's convention: the target
        is ``(1 - eps)`` on the label plus ``eps / V`` on every class.
      z_loss: ``zeta >= 0``, adds ``zeta * lse(z) ** 2`` per example (PaLM).
      chunk_size: vocabulary columns per chunk (static). Temporary memory is a
        few ``N x chunk_size`` float32 arrays.

    Returns:
      The loss: shape ``labels.shape`` for ``reduction="none"``, else a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxsce
      >>> hidden = jnp.ones((2, 3))
      >>> weight = jnp.zeros((3, 5))
      >>> jaxsce.linear_softmax_cross_entropy(hidden, weight, jnp.array([0, 4]))
      Array([1.609438, 1.609438], dtype=float32)

    References:
      Wijmans et al., `Cut Your Losses in Large-Vocabulary Language Models
      <https://arxiv.org/abs/2411.09009>`_, 2024.
    """
    return checked_linear_loss(
        "linear_softmax_cross_entropy",
        hidden,
        weight,
        labels,
        bias,
        None,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        chunk_size,
    )


def checked_linear_loss(
    fname,
    hidden,
    weight,
    labels,
    bias,
    axis_name,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss,
    chunk_size,
):
    """Checks the arguments, then runs the fused rule (on one device or a shard)."""
    hidden = jnp.asarray(hidden)
    weight = jnp.asarray(weight)
    labels = jnp.asarray(labels)
    bias = None if bias is None else jnp.asarray(bias)
    _check_linear_args(hidden, weight, labels, bias, chunk_size)
    _check_options(fname, reduction, label_smoothing, z_loss, ignore_index)
    loss = _linear_ce(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        bias,
        labels.reshape(-1),
        chunk_size,
        axis_name,
        ignore_index,
        float(label_smoothing),
        float(z_loss),
    ).reshape(labels.shape)
    return _reduce(loss, labels, reduction, ignore_index)


def _check_linear_args(hidden, weight, labels, bias, chunk_size):
    """Shape and dtype checks of the fused linear cross-entropy's arrays."""
    for name, x in (("hidden", hidden), ("weight", weight)) + (
        () if bias is None else (("bias", bias),)
    ):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if hidden.ndim < 1 or weight.ndim != 2 or weight.shape[0] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape (D, V) with D = hidden.shape[-1]; got hidden shape "
            f"{hidden.shape} and weight shape {weight.shape}"
        )
    if bias is not None and bias.shape != (weight.shape[1],):
        raise ValueError(
            f"bias must have shape (V,) = {(weight.shape[1],)}, got bias shape {bias.shape}"
        )
    _check_labels(labels, hidden.shape[:-1], "hidden")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got chunk_size={chunk_size!r}")
