r"""Fused linear layer + softmax cross-entropy that never builds the N x V logits.

The logits :math:`Z = X W + b` of a language model's output layer have one row
per token and one column per vocabulary entry. For :math:`N` tokens and a
vocabulary of :math:`V` entries they, and their gradient, dominate training
memory. Two methods avoid them:

* ``"recompute"`` walks the vocabulary in chunks of ``chunk_size`` columns.
  Forward: an online log-sum-exp over the chunks keeps, per example, the
  largest logit :math:`m` and the rest :math:`r = \sum_{k \ne \arg\max} e^{z_k - m}`
  (so :math:`\operatorname{lse} = m + \operatorname{log1p}(r)`), and the label's
  logit; only these O(N) values are saved. Backward: each chunk's logits are
  recomputed, :math:`P - Y` is formed for the chunk, :math:`\nabla_X \mathrel{+}=
  (P - Y) W_c^\top` accumulates in float32 and :math:`\nabla_{W_c} = X^\top (P - Y)`
  is written into its slot of the weight gradient (seed 002). Four products of
  size N x D x V; any cotangent, per example or not.
* ``"precompute"`` (Liger Kernel's approach) walks the *rows* in blocks whose
  logits fit in :data:`BLOCK_BYTES`: for each block it computes the whole
  rows' log-sum-exp, the loss and :math:`P - Y`, then the block's share of all
  three gradients, during the forward pass. The backward pass only multiplies
  them by the scalar cotangent. Three products, but only for a scalar loss
  (``reduction="sum"`` or ``"mean"``) and at the price of one weight-sized
  gradient buffer kept between the passes. A call that takes no gradient
  runs the forward statistics only (one product).

The same rules serve the vocab-parallel version (:mod:`jaxsce._vocab_parallel`),
where every device holds a slice of the vocabulary: the forward pass adds the
two O(N) all-reduces of Megatron-LM's algorithm.
"""

import functools
import math
import numbers
from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsce._cross_entropy import _all_valid as all_valid
from jaxsce._cross_entropy import _check_options as check_loss_options
from jaxsce._cross_entropy import _numeric_option as numeric_option
from jaxsce._logsumexp import (
    compute_dtype,
    exp_shifted,
    mask_logits,
    max_and_rest,
    scaled_exp,
)

# Default number of vocabulary columns per chunk of the "recompute" method. The
# temporaries of one step are a few (N, chunk_size) float32 arrays: at N = 2048,
# D = 1024 XLA's CPU backend reported 40 MiB, whatever V is (32 MiB at 1024
# columns, 64 MiB at 4096). 2048 is the widest of these under 64 MB; `python -m
# benchmarks.large_vocab` times all three (within a few percent of each other,
# wider chunks a little faster).
DEFAULT_CHUNK_SIZE = 2048

# "precompute": rows per block are chosen so that one block's float32 logits
# take at most this many bytes (at least one row).
BLOCK_BYTES = 56 * 2**20

# method="auto" takes "precompute" (for reduction "sum" or "mean") when the
# float32 weight-gradient buffer it keeps between the passes is at most this.
AUTO_PRECOMPUTE_MAX_BYTES = 2**30

METHODS = ("auto", "recompute", "precompute")


class LinearCrossEntropyAux(NamedTuple):
    """Per-example values returned with ``return_aux=True`` by the fused losses.

    Attributes:
      logsumexp: ``(...,)`` ``lse(z)`` of each example's (soft-capped) logits;
        differentiable. 0 for ignored examples.
      label_logprob: ``(...,)`` ``log p_y = z_y - lse(z)``; differentiable. 0
        for ignored examples, NaN for labels outside ``[0, V)``.
      correct: ``(...,)`` bool, the label holds the largest logit (ties count
        as correct); False for ignored and bad labels.
    """

    logsumexp: jax.Array
    label_logprob: jax.Array
    correct: jax.Array


class _Static(NamedTuple):
    """The static options of the fused rules (hashable)."""

    chunk_size: int
    axis_name: Hashable | None
    ignore_index: int | None
    label_smoothing: Any
    z_loss: Any
    logit_softcap: Any
    # Options given as arrays: operands of the custom rules, in this order
    # (their entries above are None until :func:`_resolve` puts them in).
    arrays: tuple[str, ...] = ()


def _on(x: Any) -> bool:
    """Whether an option adds work: an array always, a number unless it is 0."""
    return isinstance(x, jax.Array) or bool(x)


def _resolve(st: _Static, opts: tuple, dtype: Any) -> _Static:
    """``st`` with its array options (traced operands) put in, cast to ``dtype``."""
    arrays: dict[str, Any] = {k: jnp.asarray(x).astype(dtype) for k, x in zip(st.arrays, opts)}
    return st._replace(**arrays)


def _cast_cotangents(grads: dict[str, jax.Array], opts: tuple, st: _Static, per_device: bool):
    """The cotangents of the array options, summed as their primals are, in their dtypes."""
    return tuple(
        _sum_to(grads[k], _vma(x), per_device).astype(x.dtype) for k, x in zip(st.arrays, opts)
    )


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


def _finite_max(m: jax.Array) -> jax.Array:
    """The reference point of the smoothing gap: the max, or 0 where it is ``-inf``."""
    return jnp.where(m == -jnp.inf, jnp.zeros_like(m), m)


def _merge_gap(
    gap: jax.Array,
    n: Any,
    m: jax.Array,
    gap_c: jax.Array,
    n_c: Any,
    m_c: jax.Array,
    m_new: jax.Array,
) -> jax.Array:
    r"""Merges the smoothing gaps of two disjoint sets of ``n`` and ``n_c`` logits.

    The gap of a set is :math:`g = \sum_k (M - z_k) \ge 0`, with :math:`M` its
    largest logit (0 when that is :math:`-\infty`). With :math:`M'` the
    largest of the union,

    .. math::
      g \oplus g_c = g + n\,(M' - M) + g_c + n_c\,(M' - M_c),

    a sum of non-negative terms, so that :math:`m - \bar z = g / V` keeps its
    relative accuracy whatever common offset the logits have (the sum of the
    logits themselves loses it).
    """
    big = _finite_max(m_new)
    return gap + n * (big - _finite_max(m)) + gap_c + n_c * (big - _finite_max(m_c))


def _softcap(z: jax.Array, cap: Any) -> jax.Array:
    r"""Gemma 2's soft cap :math:`c \tanh(z / c)` (identity when ``cap`` is None)."""
    return z if cap is None else cap * jnp.tanh(z / cap)


def _softcap_grad(d: jax.Array, z_raw: jax.Array, cap: Any) -> jax.Array:
    r"""Chain rule through the soft cap: :math:`\partial/\partial z_{raw} = d\,(1 - t^2)`.

    With :math:`t = \tanh(z_{raw} / c)`, written :math:`(1 - t)(1 + t)`, exact
    in its factors for :math:`|t| \ge 1/2`.
    """
    if cap is None:
        return d
    t = jnp.tanh(z_raw / cap)
    return d * ((1.0 - t) * (1.0 + t))


def _softcap_dcap(d: jax.Array, z_raw: jax.Array, cap: Any) -> jax.Array:
    r""":math:`\sum d_k\, \partial z_k / \partial c` for :math:`z = c \tanh(x / c)`.

    .. math::
      \frac{\partial z}{\partial c} = t - \frac{x}{c}\,(1 - t)(1 + t),
      \qquad t = \tanh(x / c).
    """
    t = jnp.tanh(z_raw / cap)
    return jnp.sum(d * (t - (z_raw / cap) * ((1.0 - t) * (1.0 + t))))


def _scalar_option_grads(row: dict[str, Any], g: jax.Array, st: _Static, num_classes: int):
    r"""Cotangents of array ``label_smoothing`` and ``z_loss`` from the per-example values.

    .. math::
      \frac{\partial \ell}{\partial \varepsilon} = z_y - \bar z
        = \frac{\mathrm{gap}}{V} - (m - z_y), \qquad
      \frac{\partial \ell}{\partial \zeta} = \operatorname{lse}^2,

    weighted by the loss cotangent ``g`` (0 for ignored and empty rows, NaN
    for bad labels, as the loss is).
    """
    off = row["ignored"] | row["empty"]
    scale = _row_scale(g, row)
    out = {}
    if "label_smoothing" in st.arrays:
        d_eps = jnp.where(off, 0.0, row["gap"] / num_classes - row["m_minus_zy"])
        out["label_smoothing"] = jnp.sum(scale * d_eps)
    if "z_loss" in st.arrays:
        out["z_loss"] = jnp.sum(scale * jnp.where(off, 0.0, jnp.square(row["lse"])))
    return out


def _chunk_stats(
    z: jax.Array, cols: jax.Array, labels: jax.Array, valid: jax.Array | None, with_gap: bool
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(max, rest, label logit or 0, smoothing gap or 0) of one chunk of logits ``(N, C)``.

    The max is ``-inf`` in rows with no finite logit in the chunk (rest 0).
    """
    s = max_and_rest(mask_logits(z, None if valid is None else valid[None, :]))
    m_c, rest_c = jnp.where(s.empty, -jnp.inf, s.shift), s.rest
    # The label's logit by a gather (a masked sum over the row would be a pass
    # over the whole chunk); ``cols`` is ``cols[0] + iota``.
    pos = labels - cols[0]
    inside = (pos >= 0) & (pos < z.shape[-1])
    pos = jnp.clip(pos, 0, z.shape[-1] - 1)
    if valid is not None:
        inside = inside & valid[pos]
    zy_c = jnp.take_along_axis(z, pos[:, None], axis=-1, mode="promise_in_bounds")[:, 0]
    zy_c = jnp.where(inside, zy_c, 0.0)
    if with_gap:
        below = _finite_max(m_c)[:, None] - z
        if valid is not None:
            below = jnp.where(valid[None, :], below, 0.0)
        gap_c = jnp.sum(below, axis=-1)
    else:
        gap_c = jnp.zeros_like(m_c)
    return m_c, rest_c, zy_c, gap_c


def _chunk_dlogits(
    z: jax.Array,
    cols: jax.Array,
    labels: jax.Array,
    row: dict[str, jax.Array],
    valid: jax.Array | None,
    num_classes: int,
    label_smoothing: Any,
    z_loss: Any,
) -> jax.Array:
    r"""Gradient of the per-example outputs with respect to one chunk of logits.

    .. math::
      \frac{\partial}{\partial z_k} = g \bigl(p_k (1 + 2 \zeta \operatorname{lse})
      - q_k\bigr) + h\,p_k + u\,([k = y] - p_k), \qquad
      q = (1 - \varepsilon)\, e_y + \varepsilon / V,

    for the cotangents :math:`g` of the loss, :math:`h` of the log-sum-exp and
    :math:`u` of the label's log-probability. The loss part is written as
    :math:`(p_k - [k = y]) + 2\zeta\operatorname{lse}\,p_k + \varepsilon([k = y]
    - 1/V)`, where :math:`p_y - 1 = -r / (1 + r)` when the label holds the
    largest logit (no cancellation for confident predictions).

    Args:
      z: chunk logits ``(N, C)`` in the accumulation dtype (soft-capped).
      cols: vocabulary index of each column ``(C,)``, same numbering as ``labels``.
      labels: ``(N,)``.
      row: per-example values ``m``, ``rest``, ``lse``, ``y_is_max``, ``scale``
        (cotangent g, 0 for examples that give no gradient, NaN for bad
        labels) and optionally ``lse_scale`` (h) and ``logp_scale`` (u).
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
    # e^{z - m}, exactly 1 on the largest logits (scaled_exp's two factors round).
    e = jnp.where(z == m[:, None], 1.0, scaled_exp(z, m))
    p = jnp.where(label_top, inv[:, None], e * inv[:, None])
    p_minus_y = jnp.where(
        is_label, jnp.where(y_is_max[:, None], (-rest * inv)[:, None], p - 1.0), p
    )
    d = p_minus_y
    if _on(z_loss):
        d = d + (2.0 * z_loss * row["lse"])[:, None] * p
    if _on(label_smoothing):
        d = d + label_smoothing * (is_label.astype(z.dtype) - 1.0 / num_classes)
    d = d * row["scale"][:, None]
    if "lse_scale" in row:
        # h p + u (y - p), with the accurate p - y
        d = d + row["lse_scale"][:, None] * p - row["logp_scale"][:, None] * p_minus_y
    if valid is not None:
        d = jnp.where(valid[None, :], d, 0.0)
    return d


def _example_losses(
    m: jax.Array,
    rest: jax.Array,
    m_minus_zy: jax.Array,
    gap: jax.Array,
    num_classes: int,
    label_smoothing: Any,
    z_loss: Any,
) -> jax.Array:
    r"""Per-example loss from the (max, rest) statistics.

    .. math::
      \ell = (1 - \varepsilon)\bigl((m - z_y) + \operatorname{log1p}(r)\bigr)
      + \varepsilon\bigl(g / V + \operatorname{log1p}(r)\bigr)
      + \zeta\,(m + \operatorname{log1p}(r))^2,

    with the gap :math:`g = \sum_k (m - z_k)`, so :math:`g / V = m - \bar z`.
    """
    log1p_rest = jnp.log1p(rest)
    loss = m_minus_zy + log1p_rest
    if _on(label_smoothing):
        smooth = gap / num_classes + log1p_rest
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    if _on(z_loss):
        loss = loss + z_loss * jnp.square(m + log1p_rest)
    return loss


def _combine_shards(
    m_l: jax.Array,
    rest_l: jax.Array,
    zy_l: jax.Array,
    gap_l: jax.Array,
    v_local: int,
    owned: jax.Array,
    axis_name: Hashable | None,
    with_gap: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""Global (max, rest, m - z_y, smoothing gap) from each shard's local values.

    Without ``axis_name`` the local values are the global ones. With it
    (Megatron-LM's algorithm), exactly two all-reduces of O(N): a max, then a
    single sum of the stacked

    .. math::
      b_s = \begin{cases} r_s & m_s = m \\ (1 + r_s)\, e^{m_s - m} & m_s < m \end{cases},
      \quad a_s = [m_s = m], \quad [y \in s]\,(m - z_y), \quad g_s + n_s (M - M_s),

    giving :math:`r = \sum_s b_s + (\sum_s a_s - 1)` with the ``- 1`` exact, and
    the gap of :func:`_merge_gap` over the whole vocabulary (each shard holds
    :math:`n_s` = ``v_local`` classes; the loss divides it by the global
    :math:`V = \sum_s n_s`).
    """
    if axis_name is None:
        m_minus_zy = jnp.where(owned, m_l - zy_l, 0.0)
        return m_l, rest_l, m_minus_zy, gap_l
    m = lax.pmax(m_l, axis_name)
    top = m_l == m
    b = jnp.where(top, rest_l, (1.0 + rest_l) * exp_shifted(m_l, m))
    a = top.astype(rest_l.dtype)
    m_minus_zy = jnp.where(owned, m - zy_l, 0.0)
    parts = [b, a, m_minus_zy]
    if with_gap:
        parts.append(gap_l + v_local * (_finite_max(m) - _finite_max(m_l)))
    total = lax.psum(jnp.stack(parts), axis_name)
    rest = total[0] + (total[1] - 1.0)
    gap = total[3] if with_gap else jnp.zeros_like(m)
    return m, rest, total[2], gap


def _row_values(
    m: jax.Array,
    rest: jax.Array,
    m_minus_zy: jax.Array,
    ignored: jax.Array,
    bad: jax.Array,
) -> dict[str, Any]:
    """Per-example masks and NaN-safe statistics used by the loss and the gradient."""
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
        "m_minus_zy": m_minus_zy,
    }


def _mask_losses(loss: jax.Array, row: dict[str, Any]) -> jax.Array:
    loss = jnp.where(row["empty"], jnp.inf, loss)
    loss = jnp.where(row["ignored"], 0.0, loss)
    return jnp.where(row["bad"], jnp.nan, loss)


def _row_scale(g: jax.Array, row: dict[str, Any]) -> jax.Array:
    scale = jnp.where(row["ignored"] | row["empty"], 0.0, g)
    return jnp.where(row["bad"], jnp.nan, scale)


def _aux_values(row: dict[str, Any]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(lse, label log-probability, label is the argmax) per example, masked."""
    lse = jnp.where(row["empty"], -jnp.inf, row["lse"])
    logp = -(row["m_minus_zy"] + jnp.log1p(row["rest"]))
    logp = jnp.where(row["empty"], jnp.where(row["m_minus_zy"] == 0, jnp.nan, -jnp.inf), logp)
    off = row["ignored"] | row["bad"]
    lse = jnp.where(row["ignored"], 0.0, lse)
    logp = jnp.where(row["bad"], jnp.nan, jnp.where(row["ignored"], 0.0, logp))
    correct = row["y_is_max"] & ~off & ~row["empty"]
    return lse, logp, correct


# --------------------------------------------------------------------------
# Labels, shards and mesh axes.
# --------------------------------------------------------------------------


def _label_masks(
    labels: jax.Array, num_classes: int, ignore_index: int | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(int32 class index, -1 where none; ignored; bad) of labels of any integer dtype.

    Comparisons are made in the labels' own dtype only with values it can
    hold: an ``ignore_index`` the dtype cannot represent (``-100`` for uint8
    labels) matches nothing, and a vocabulary larger than the dtype's range
    (``V = 256`` for uint8) leaves no label above it. Nothing wraps.
    """
    info = jnp.iinfo(labels.dtype)
    if ignore_index is not None and info.min <= ignore_index <= info.max:
        ignored = labels == jnp.asarray(ignore_index, labels.dtype)
    else:
        ignored = jnp.zeros(labels.shape, bool)
    valid = labels >= jnp.asarray(0, labels.dtype) if info.min < 0 else jnp.ones(labels.shape, bool)
    if num_classes - 1 < info.max:
        valid = valid & (labels <= jnp.asarray(num_classes - 1, labels.dtype))
    index = jnp.where(valid & ~ignored, labels.astype(jnp.int32), -1)
    return index, ignored, ~valid & ~ignored


def _axes(axis_name: Hashable | None) -> tuple[Hashable, ...]:
    if axis_name is None:
        return ()
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _vma(x: Any) -> frozenset:
    """The mesh axes ``x`` varies over (inside ``shard_map`` with ``check_vma``)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "mat", None)
    if mat is not None:
        return frozenset(getattr(mat, "varying", ()))
    return frozenset(getattr(aval, "vma", ()))


def _per_device(axis_name: Hashable | None) -> bool:
    """Whether the collectives over ``axis_name`` follow per-device semantics.

    That is ``shard_map(..., check_vma=False)`` and ``vmap(axis_name=...)``:
    JAX then transposes a ``psum`` in the forward pass to a ``psum`` of the
    cotangents, and hands each device's output its own cotangent. With
    ``check_vma=True`` the loss is known to be replicated over ``axis_name``
    and its cotangent is the same on every shard.
    """
    axes = _axes(axis_name)
    return bool(axes) and not set(axes) <= _vma(lax.axis_index(axis_name))


def _check_bound_in_backward(axis_name: Hashable | None) -> None:
    """Raises a clear error where the backward pass cannot see ``axis_name``.

    JAX traces a custom rule's backward pass outside ``jax.vmap``: an axis
    named by ``vmap(axis_name=...)`` is bound in the forward pass only.
    """
    if axis_name is None:
        return
    try:
        for a in _axes(axis_name):
            lax.axis_size(a)
    except NameError:
        raise ValueError(
            f"jaxsce vocab-parallel loss: the gradient needs the axis {axis_name!r} in the"
            " backward pass, which JAX does not bind for jax.vmap(axis_name=...) (it traces"
            " a custom rule's backward pass outside the vmap). Values work under vmap; for"
            " gradients shard the vocabulary with jax.shard_map instead."
        ) from None


def _varying(x: Any, axes: frozenset) -> Any:
    """Marks loop carries as varying over ``axes`` (those they do not vary over yet)."""

    def cast(a):
        missing = tuple(sorted(axes - _vma(a), key=str))
        return lax.pcast(a, missing, to="varying") if missing else a

    return jax.tree_util.tree_map(cast, x)


def _sum_to(ct: jax.Array, primal_vma: frozenset, per_device: bool) -> jax.Array:
    """Sums a cotangent over the mesh axes its primal input is replicated over."""
    extra = tuple(sorted(_vma(ct) - primal_vma, key=str))
    return lax.psum(ct, extra) if extra and not per_device else ct


class _Layout(NamedTuple):
    """Where each example's label lives, and which examples count."""

    hidden: jax.Array  # ignored rows set to 0 (NaN there cannot reach the gradients)
    local: jax.Array  # int32 label index among this shard's columns (any value if not owned)
    owned: jax.Array
    ignored: jax.Array
    bad: jax.Array
    num_classes: int
    loop_vma: frozenset  # what the per-shard loop carries vary over
    row_vma: frozenset  # what the combined per-example values vary over


def _layout(hidden, weight, bias, labels, st: _Static) -> _Layout:
    """Shard ``s`` of ``axis_name`` holds classes ``[s v, (s + 1) v)``, ``v = weight.shape[1]``."""
    v_local = weight.shape[1]
    axes = _axes(st.axis_name)
    num_classes = v_local * (math.prod(lax.axis_size(a) for a in axes) if axes else 1)
    index, ignored, bad = _label_masks(labels, num_classes, st.ignore_index)
    local = index - lax.axis_index(st.axis_name) * v_local if axes else index
    owned = (local >= 0) & (local < v_local) & (index >= 0)
    hidden = jnp.where(ignored[:, None], jnp.zeros_like(hidden), hidden)
    inputs = [hidden, weight, labels] + ([] if bias is None else [bias])
    inputs += [getattr(st, k) for k in st.arrays]
    loop_vma = frozenset().union(*(_vma(x) for x in inputs))
    return _Layout(hidden, local, owned, ignored, bad, num_classes, loop_vma, loop_vma - set(axes))


# --------------------------------------------------------------------------
# "recompute": the chunk loops.
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
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array, jax.Array]:
    """Logits of chunk ``i``: columns ``[start, start + c)`` of ``hidden @ weight + bias``.

    The last chunk of a vocabulary that ``c`` does not divide starts at
    ``V - c`` instead, overlapping its predecessor; ``valid`` marks the
    columns it owns (those at or after ``i * c``). Nothing is padded or copied.

    Returns:
      ``(z, cols, valid, start, w)``: the raw (not soft-capped) ``z`` of shape
      ``(N, c)`` in float32 (or wider), the weight chunk ``w`` in ``hidden``'s dtype.
    """
    v = weight.shape[1]
    acc = compute_dtype(hidden.dtype)
    start = jnp.minimum(i * c, v - c)
    w = lax.dynamic_slice_in_dim(weight, start, c, axis=1).astype(hidden.dtype)
    z = lax.dot_general(hidden, w, (((1,), (0,)), ((), ())), preferred_element_type=acc)
    if bias is not None:
        z = z + lax.dynamic_slice_in_dim(bias, start, c).astype(acc)[None, :]
    cols = start.astype(jnp.int32) + lax.iota(jnp.int32, c)
    valid = cols >= (i * c).astype(jnp.int32) if overlaps else None
    return z, cols, valid, start, w


def _local_stats(hidden, weight, bias, lay: _Layout, st: _Static, with_gap: bool):
    """Online (max, rest, label logit, smoothing gap) over the chunks of ``weight``."""
    n, v = hidden.shape[0], weight.shape[1]
    c, n_chunks, overlaps = _chunking(v, st.chunk_size)
    acc = compute_dtype(hidden.dtype)

    def body(i, carry):
        m, rest, zy, gap = carry
        z, cols, valid, _, _ = _chunk_logits(hidden, weight, bias, i, c, overlaps)
        z = _softcap(z, st.logit_softcap)
        m_c, rest_c, zy_c, gap_c = _chunk_stats(z, cols, lay.local, valid, with_gap)
        m_new, rest = _merge_max_and_rest(m, rest, m_c, rest_c)
        if with_gap:
            seen = (i * c).astype(acc)
            gap = _merge_gap(gap, seen, m, gap_c, jnp.minimum(v - seen, c), m_c, m_new)
        return m_new, rest, zy + zy_c, gap

    init = (
        jnp.full((n,), -jnp.inf, acc),
        jnp.zeros((n,), acc),
        jnp.zeros((n,), acc),
        jnp.zeros((n,), acc),
    )
    return lax.fori_loop(0, n_chunks, body, _varying(init, lay.loop_vma))


def _local_grads(hidden, weight, bias, lay: _Layout, row, st: _Static):
    """Gradients for ``hidden`` (float32 partial sum), ``weight``, ``bias`` by chunks.

    Also the partial (this shard's columns) cotangent of an array ``logit_softcap``.
    """
    c, n_chunks, overlaps = _chunking(weight.shape[1], st.chunk_size)
    acc = compute_dtype(hidden.dtype)
    eps, zeta = st.label_smoothing, st.z_loss
    cap_array = "logit_softcap" in st.arrays

    def body(i, carry):
        dh, dw_buf, db_buf, dcap = carry
        z_raw, cols, valid, start, w = _chunk_logits(hidden, weight, bias, i, c, overlaps)
        z = _softcap(z_raw, st.logit_softcap)
        d = _chunk_dlogits(z, cols, lay.local, row, valid, lay.num_classes, eps, zeta)
        if cap_array:
            dcap = dcap + _softcap_dcap(d, z_raw, st.logit_softcap)
        d = _softcap_grad(d, z_raw, st.logit_softcap)
        d_lo = d.astype(hidden.dtype)
        dh = dh + lax.dot_general(d_lo, w, (((1,), (1,)), ((), ())), preferred_element_type=acc)
        dw = lax.dot_general(hidden, d_lo, (((0,), (0,)), ((), ())), preferred_element_type=acc)
        dw_buf = _write_chunk(dw_buf, dw.astype(dw_buf.dtype), start, valid, axis=1)
        if db_buf is not None:
            db = jnp.sum(d, axis=0).astype(db_buf.dtype)
            db_buf = _write_chunk(db_buf, db, start, valid, axis=0)
        return dh, dw_buf, db_buf, dcap

    init = (
        jnp.zeros(hidden.shape, acc),
        jnp.zeros(weight.shape, weight.dtype),
        None if bias is None else jnp.zeros(bias.shape, bias.dtype),
        jnp.zeros((), acc) if cap_array else None,
    )
    return lax.fori_loop(0, n_chunks, body, _varying(init, lay.loop_vma))


def _write_chunk(buf, chunk, start, valid, axis):
    """Writes ``chunk`` into ``buf`` at ``start`` along ``axis``, keeping entries not owned."""
    if valid is not None:
        old = lax.dynamic_slice_in_dim(buf, start, chunk.shape[axis], axis=axis)
        mask = valid if chunk.ndim == 1 else (valid[None, :] if axis == 1 else valid[:, None])
        chunk = jnp.where(mask, chunk, old)
    return lax.dynamic_update_slice_in_dim(buf, chunk, start, axis=axis)


def _forward(hidden, weight, bias, labels, st: _Static):
    """Per-example rows of statistics (one product), and the layout."""
    lay = _layout(hidden, weight, bias, labels, st)
    with_gap = _on(st.label_smoothing)
    local = _local_stats(lay.hidden, weight, bias, lay, st, with_gap)
    loss, row = _losses_from_local(local, weight.shape[1], lay, st, with_gap)
    return loss, row, lay


def _losses_from_local(local, v_local, lay, st: _Static, with_gap: bool):
    """Per-example losses and row values from one shard's (max, rest, z_y, gap)."""
    m_l, rest_l, zy_l, gap_l = local
    m, rest, m_minus_zy, gap = _combine_shards(
        m_l, rest_l, zy_l, gap_l, v_local, lay.owned, st.axis_name, with_gap
    )
    row = _row_values(m, rest, m_minus_zy, lay.ignored, lay.bad)
    row["gap"] = gap
    loss = _example_losses(
        row["m"], row["rest"], m_minus_zy, gap, lay.num_classes, st.label_smoothing, st.z_loss
    )
    return _mask_losses(loss, row), row


def _saved_stats(row: dict[str, Any], st: _Static) -> tuple:
    """The O(N) values the backward pass keeps (the gap only for an array smoothing)."""
    stats = (row["m"], row["rest"], row["m_minus_zy"], row["empty"])
    return stats + ((row["gap"],) if "label_smoothing" in st.arrays else ())


def _outputs(loss, row, with_aux):
    if not with_aux:
        return (loss,)
    lse, logp, correct = _aux_values(row)
    return loss, lse, logp, correct.astype(loss.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _linear_ce(hidden, weight, bias, labels, opts, st: _Static, with_aux: bool):
    """Per-example (loss,) or (loss, lse, label log-prob, correct) of ``hidden @ weight + b``.

    ``opts``: the options ``st.arrays`` names, as scalar arrays (differentiable).
    """
    st = _resolve(st, opts, compute_dtype(hidden.dtype))
    loss, row, _ = _forward(hidden, weight, bias, labels, st)
    return _outputs(loss, row, with_aux)


def _linear_ce_fwd(hidden, weight, bias, labels, opts, st, with_aux):
    loss, row, _ = _forward(
        hidden, weight, bias, labels, _resolve(st, opts, compute_dtype(hidden.dtype))
    )
    res = (hidden, weight, bias, labels, opts, _saved_stats(row, st))
    return _outputs(loss, row, with_aux), res


def _restore_rows(stats, lay: _Layout) -> dict[str, Any]:
    m, rest, m_minus_zy, empty = stats[:4]
    row = _row_values(jnp.where(empty, -jnp.inf, m), rest, m_minus_zy, lay.ignored, lay.bad)
    if len(stats) > 4:
        row["gap"] = stats[4]
    return row


def _set_scales(row, cts, lay: _Layout, with_aux: bool, dtype) -> None:
    row["scale"] = _row_scale(cts[0].astype(dtype), row)
    if with_aux:
        off = lay.ignored | lay.bad | row["empty"]
        row["lse_scale"] = jnp.where(off, 0.0, cts[1].astype(dtype))
        row["logp_scale"] = jnp.where(off, 0.0, cts[2].astype(dtype))


def _linear_ce_bwd(st_static, with_aux, res, cts):
    hidden, weight, bias, labels, opts, stats = res
    _check_bound_in_backward(st_static.axis_name)
    acc = compute_dtype(hidden.dtype)
    st = _resolve(st_static, opts, acc)
    lay = _layout(hidden, weight, bias, labels, st)
    row = _restore_rows(stats, lay)
    per_device = _per_device(st.axis_name)
    # The options' per-example cotangents use each device's own loss cotangent
    # (the per-example values are the same on every shard of the vocabulary).
    opt_grads = _scalar_option_grads(row, cts[0].astype(acc), st, lay.num_classes)
    cts = [lax.psum(g, st.axis_name) if per_device else g for g in cts]
    _set_scales(row, cts, lay, with_aux, acc)
    dh, dw, db, dcap = _local_grads(lay.hidden, weight, bias, lay, row, st)
    if dcap is not None:
        opt_grads["logit_softcap"] = dcap
    return (
        _sum_to(dh, _vma(hidden), per_device).astype(hidden.dtype),
        _sum_to(dw, _vma(weight), per_device),
        None if db is None else _sum_to(db, _vma(bias), per_device),
        None,
        _cast_cotangents(opt_grads, opts, st_static, per_device),
    )


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


# --------------------------------------------------------------------------
# "precompute": gradients in the forward pass, by blocks of rows.
# --------------------------------------------------------------------------


def _block_rows(n: int, v_local: int) -> int:
    """Rows per block: one block's float32 logits within :data:`BLOCK_BYTES`.

    The fewest blocks that fit, made about equal (a multiple of 8 rows where
    that still fits), so that the last block overlaps its predecessor little.
    """
    b_max = max(1, BLOCK_BYTES // (4 * v_local))
    n_blocks = -(-n // b_max)
    b = -(-n // max(n_blocks, 1))
    if b >= 8:
        b = min(b_max, -(-b // 8) * 8)
    return max(1, min(b, n))


def _precompute(hidden, weight, bias, labels, st: _Static):
    """Summed loss and its (unscaled, per-shard) gradients, by blocks of whole rows.

    Each block of ``b`` rows: logits ``(b, V)`` (one product), their exact
    log-sum-exp, loss and ``P - Y``, then ``dhidden`` rows (second product) and
    the block's share of ``dweight`` (third product) and ``dbias``.
    """
    lay = _layout(hidden, weight, bias, labels, st)
    h = lay.hidden
    n, v = h.shape[0], weight.shape[1]
    acc = compute_dtype(hidden.dtype)
    b = _block_rows(n, v)
    n_blocks, overlaps = -(-n // b), n % b != 0
    w = weight.astype(hidden.dtype)
    cols = lax.iota(jnp.int32, v)
    with_gap = _on(st.label_smoothing)
    cap_array = "logit_softcap" in st.arrays

    def block(j, carry, first: bool):
        (total, d_opts), dh, dw, db, dcap = carry
        start = jnp.minimum(j * b, n - b)
        rows = lambda x: lax.dynamic_slice_in_dim(x, start, b, axis=0)  # noqa: E731
        hb, local = rows(h), rows(lay.local)
        z_raw = lax.dot_general(hb, w, (((1,), (0,)), ((), ())), preferred_element_type=acc)
        if bias is not None:
            z_raw = z_raw + bias.astype(acc)[None, :]
        z = _softcap(z_raw, st.logit_softcap)
        m_l, rest_l, zy_l, gap_l = _chunk_stats(z, cols, local, None, with_gap)
        m, rest, m_minus_zy, gap = _combine_shards(
            m_l, rest_l, zy_l, gap_l, v, rows(lay.owned), st.axis_name, with_gap
        )
        row = _row_values(m, rest, m_minus_zy, rows(lay.ignored), rows(lay.bad))
        row["gap"] = gap
        loss = _example_losses(
            row["m"], row["rest"], m_minus_zy, gap, lay.num_classes, st.label_smoothing, st.z_loss
        )
        loss = _mask_losses(loss, row)
        mine = start + lax.iota(jnp.int32, b) >= j * b if overlaps else None
        if mine is not None:
            loss = jnp.where(mine, loss, 0.0)
        one = jnp.ones_like(loss) if mine is None else mine.astype(loss.dtype)
        row["scale"] = _row_scale(one, row)
        block_opts = _scalar_option_grads(row, one, st, lay.num_classes)
        d_opts = {k: d_opts[k] + block_opts[k] for k in d_opts}
        d = _chunk_dlogits(
            z, cols, local, row, None, lay.num_classes, st.label_smoothing, st.z_loss
        )
        if cap_array:
            dcap = dcap + _softcap_dcap(d, z_raw, st.logit_softcap)
        d = _softcap_grad(d, z_raw, st.logit_softcap)
        d_lo = d.astype(hidden.dtype)
        dh_b = lax.dot_general(d_lo, w, (((1,), (1,)), ((), ())), preferred_element_type=acc)
        dh = _write_chunk(dh, dh_b, start, mine, axis=0)
        dw_b = lax.dot_general(hb, d_lo, (((0,), (0,)), ((), ())), preferred_element_type=acc)
        # The first block writes the weight's gradient instead of adding to
        # zeros: one pass less over a weight-sized buffer.
        dw = dw_b if first else dw + dw_b
        if db is not None:
            db = jnp.sum(d, axis=0) if first else db + jnp.sum(d, axis=0)
        return (total + jnp.sum(loss), d_opts), dh, dw, db, dcap

    loop = (
        jnp.zeros(h.shape, acc),
        jnp.zeros(weight.shape, acc),
        None if bias is None else jnp.zeros(bias.shape, acc),
        jnp.zeros((), acc) if cap_array else None,
    )
    # The summed loss and the cotangents of array label_smoothing / z_loss are
    # sums of per-example values (replicated over the vocabulary shards).
    per_row = (
        jnp.zeros((), acc),
        {k: jnp.zeros((), acc) for k in st.arrays if k != "logit_softcap"},
    )

    def typed(carry):  # the loop carries' types, as shard_map wants them
        return (_varying(carry[0], lay.row_vma),) + _varying(carry[1:], lay.loop_vma)

    init = typed((per_row,) + loop)
    if n == 0:
        return init
    body = lambda j, carry: block(j, carry, first=False)  # noqa: E731
    return lax.fori_loop(1, n_blocks, body, typed(block(0, init, first=True)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _linear_ce_total(hidden, weight, bias, labels, opts, st: _Static):
    """Sum over examples of the loss; without a gradient, the forward statistics only."""
    st = _resolve(st, opts, compute_dtype(hidden.dtype))
    loss, _, _ = _forward(hidden, weight, bias, labels, st)
    return jnp.sum(loss)


def _linear_ce_total_fwd(hidden, weight, bias, labels, opts, st):
    st_arrays = _resolve(st, opts, compute_dtype(hidden.dtype))
    (total, d_opts), dh, dw, db, dcap = _precompute(hidden, weight, bias, labels, st_arrays)
    if dcap is not None:
        d_opts["logit_softcap"] = dcap
    # The inputs ride along only for their dtypes and mesh types (no copies).
    return total, (dh, dw, db, d_opts, hidden, weight, bias, opts)


def _linear_ce_total_bwd(st, res, g):
    dh, dw, db, d_opts, hidden, weight, bias, opts = res
    _check_bound_in_backward(st.axis_name)
    grads = _scale_precomputed(g, (dh, dw, db), (hidden, weight, bias), st.axis_name)
    # label_smoothing and z_loss: per-example sums, scaled by each device's own
    # cotangent; logit_softcap: this shard's columns, scaled as the gradients are.
    per_device = _per_device(st.axis_name)
    g_all = lax.psum(g, st.axis_name) if per_device else g
    scaled = {
        k: (g_all if k == "logit_softcap" else g).astype(x.dtype) * x for k, x in d_opts.items()
    }
    return (*grads, _cast_cotangents(scaled, opts, st, per_device))


def _scale_precomputed(g, grads, primals, axis_name):
    r"""The backward pass of "precompute": :math:`\bar g\,\nabla` for the scalar cotangent.

    Under per-device semantics the cotangent of the (replicated) loss is
    summed over ``axis_name`` first, as JAX does for a ``psum`` in the forward
    pass; then each gradient is summed over the mesh axes its input is
    replicated over, and cast to its input's dtype.
    """
    per_device = _per_device(axis_name)
    if per_device:
        g = lax.psum(g, axis_name)
    out = []
    for grad, primal in zip(grads, primals):
        if grad is None:
            out.append(None)
            continue
        scaled = _sum_to(g.astype(grad.dtype) * grad, _vma(primal), per_device)
        out.append(scaled.astype(primal.dtype))
    return (*out, None)


_linear_ce_total.defvjp(_linear_ce_total_fwd, _linear_ce_total_bwd)


# --------------------------------------------------------------------------
# Argument checking, method choice and reductions (shared with vocab-parallel).
# --------------------------------------------------------------------------


def _check_options(
    fname,
    reduction,
    label_smoothing,
    z_loss,
    ignore_index,
    logit_softcap=None,
    chunk_size=DEFAULT_CHUNK_SIZE,
    method="recompute",
    return_aux=False,
):
    """Checks every option eagerly.

    Returns:
      ``(ignore_index, chunk_size, numeric)``: ``numeric`` maps
      ``label_smoothing``, ``z_loss`` and ``logit_softcap`` to ``(static,
      array, valid)`` as :func:`jaxsce._cross_entropy._numeric_option` gives
      them: a Python number stays static (``logit_softcap=None`` too); an array
      is a scalar operand, checked at once when concrete, with the traced
      predicate ``valid`` otherwise.

    Raises:
      ValueError naming the function, the option, what it must be and what it got.
    """
    check_loss_options(fname, reduction, None, 0.0, "torch", 0.0)
    numeric = {
        "label_smoothing": numeric_option(fname, "label_smoothing", label_smoothing),
        "z_loss": numeric_option(fname, "z_loss", z_loss),
        "logit_softcap": (None, None, None)
        if logit_softcap is None
        else numeric_option(fname, "logit_softcap", logit_softcap),
    }
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
    ):
        raise ValueError(
            f"{fname}: `ignore_index` must be an int or None, got ignore_index={ignore_index!r}."
        )
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(
            f"{fname}: `chunk_size` must be a positive int, got chunk_size={chunk_size!r}."
        )
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"{fname}: `method` must be one of {METHODS}, got method={method!r}.")
    if not isinstance(return_aux, bool):
        raise ValueError(f"{fname}: `return_aux` must be a bool, got return_aux={return_aux!r}.")
    if method == "precompute" and reduction == "none":
        raise ValueError(
            f"{fname}: method='precompute' computes the gradient of a scalar loss in the forward"
            " pass; it needs reduction='sum' or 'mean', got reduction='none'"
            " (use method='recompute' or 'auto')."
        )
    if method == "precompute" and return_aux:
        raise ValueError(
            f"{fname}: method='precompute' does not return the per-example aux outputs (their"
            " gradients need the recomputing backward pass); use method='recompute' or 'auto'"
            " with return_aux=True."
        )
    return None if ignore_index is None else int(ignore_index), int(chunk_size), numeric


def _static_and_operands(chunk_size, axis_name, ignore_index, numeric):
    """``(_Static, opts, valid)``: array options become operands of the custom rules.

    Integer arrays are cast to float32 (their cotangent is then float0).
    """
    arrays = tuple(k for k, (_, a, _) in numeric.items() if a is not None)
    opts = tuple(
        a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.float32)
        for _, a, _ in (numeric[k] for k in arrays)
    )
    static = {k: v for k, (v, _, _) in numeric.items()}
    st = _Static(
        chunk_size,
        axis_name,
        ignore_index,
        static["label_smoothing"],
        static["z_loss"],
        static["logit_softcap"],
        arrays,
    )
    return st, opts, all_valid(*(v for _, _, v in numeric.values()))


def _check_labels(fname, labels, batch_shape, name):
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{fname}: `labels` must have an integer dtype, got {labels.dtype}.")
    if labels.shape != tuple(batch_shape):
        raise ValueError(
            f"{fname}: `labels` shape {labels.shape} does not match the {name} shape "
            f"without its last axis {tuple(batch_shape)}."
        )


def _choose_method(method, reduction, return_aux, weight_shape):
    """The method "auto" stands for: "precompute" for a scalar loss whose buffer fits."""
    if method != "auto":
        return method
    if reduction == "none" or return_aux:
        return "recompute"
    buffer = 4 * math.prod(weight_shape)  # the float32 weight gradient kept between passes
    return "precompute" if buffer <= AUTO_PRECOMPUTE_MAX_BYTES else "recompute"


def _counted(labels, ignore_index):
    """Examples whose label is not ``ignore_index`` (compared without wrapping)."""
    if ignore_index is None:
        return jnp.ones(labels.shape, bool)
    info = jnp.iinfo(labels.dtype)
    if not info.min <= ignore_index <= info.max:
        return jnp.ones(labels.shape, bool)
    return labels != jnp.asarray(ignore_index, labels.dtype)


def _mean(total, labels, ignore_index):
    """Sum divided by the number of counted examples; 0 with a zero gradient if none."""
    count = jnp.sum(_counted(labels, ignore_index)).astype(total.dtype)
    # Every example ignored: 0 with a zero gradient, as the core loss (PyTorch gives NaN).
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def _reduce(loss, labels, reduction, ignore_index):
    """Applies ``reduction``; "mean" divides by the number of non-ignored examples."""
    if reduction == "none":
        return loss
    total = jnp.sum(loss)  # ignored examples are 0
    return total if reduction == "sum" else _mean(total, labels, ignore_index)


def _nan_unless(valid, x):
    """``x``, or NaN where a traced option failed its check (``valid`` False)."""
    return x if valid is None else jnp.where(valid, x, jnp.nan)


@functools.partial(jax.jit, static_argnames=("st", "reduction", "method", "return_aux"))
def _fused_loss(hidden, weight, bias, labels, opts, valid, st, reduction, method, return_aux):
    """The checked call: flattens the batch, runs the chosen rule, reduces."""
    h = hidden.reshape(labels.size, hidden.shape[-1])
    y = labels.reshape(labels.size)
    if _choose_method(method, reduction, return_aux, weight.shape) == "precompute":
        total = _nan_unless(valid, _linear_ce_total(h, weight, bias, y, opts, st))
        return total if reduction == "sum" else _mean(total, y, st.ignore_index)
    outs = _linear_ce(h, weight, bias, y, opts, st, return_aux)
    return _finish_per_example(outs, labels, valid, reduction, st.ignore_index, return_aux)


def _finish_per_example(outs, labels, valid, reduction, ignore_index, return_aux):
    """Per-example outputs of a custom rule back to ``labels``' shape, reduced."""
    loss = _nan_unless(valid, outs[0].reshape(labels.shape))
    loss = _reduce(loss, labels, reduction, ignore_index)
    if not return_aux:
        return loss
    lse, logp, correct = (x.reshape(labels.shape) for x in outs[1:])
    return loss, LinearCrossEntropyAux(lse, logp, correct > 0)


# --------------------------------------------------------------------------
# Public function.
# --------------------------------------------------------------------------


def linear_softmax_cross_entropy(
    hidden: jax.typing.ArrayLike,
    weight: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "none",
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    logit_softcap: float | jax.typing.ArrayLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    method: str = "auto",
    return_aux: bool = False,
) -> Any:
    r"""Softmax cross-entropy of a linear layer's output, without materialising the logits.

    Equals ``softmax_cross_entropy_with_integer_labels(hidden @ weight + bias, labels)``
    with the options below, but neither the ``(N, V)`` logits nor their
    gradient ever exist (see ``method``).

    .. math::
      z = c \tanh\bigl((x W + b) / c\bigr), \qquad
      \ell = (1 - \varepsilon)\,(\operatorname{lse}(z) - z_y)
        + \varepsilon\,(\operatorname{lse}(z) - \tfrac{1}{V}\textstyle\sum_k z_k)
        + \zeta \operatorname{lse}(z)^2,

    .. math::
      \frac{\partial \ell}{\partial z} = p\,(1 + 2\zeta\operatorname{lse}(z)) - q,
      \quad q = (1 - \varepsilon)\,e_y + \varepsilon / V, \qquad
      \frac{\partial z}{\partial (xW + b)} = 1 - \tanh^2\bigl((xW + b) / c\bigr),

    (no cap: :math:`z = xW + b`), :math:`\nabla_W = X^\top \partial\ell/\partial Z_{raw}`,
    :math:`\nabla_X = \partial\ell/\partial Z_{raw}\, W^\top`, with
    :math:`\operatorname{lse}(z) = m + \operatorname{log1p}(r)`, :math:`m`
    the largest logit and :math:`r` the sum of the others' :math:`e^{z_k - m}`,
    so that a confident prediction's loss :math:`\operatorname{log1p}(r)` and
    its label gradient :math:`-r / (1 + r)` keep float32's relative accuracy.
    The smoothing term's :math:`m - \bar z` is summed as
    :math:`\frac1V\sum_k (m - z_k)`, accurate under any common offset.

    Edge behaviour: examples whose label equals ``ignore_index`` give loss 0
    and exactly zero gradients (their ``hidden`` row is not used, so NaN in it
    reaches nothing); any other label outside ``[0, V)`` gives a NaN loss (and
    NaN gradients), never a wrapped index (:func:`jaxsce.check_labels` raises
    an error naming it instead). Labels of any integer dtype are compared
    without wrapping: an ``ignore_index`` the dtype cannot hold (``-100`` for
    ``uint8``) matches nothing. A row whose logits are all ``-inf`` (e.g. a
    ``-inf`` bias everywhere) gives loss ``+inf`` and gradient 0; a label whose
    logit is ``-inf`` gives ``+inf``. NaN or ``+inf`` logits give NaN. ``D = 0``
    gives logits equal to the bias (0 without one); ``V = 0`` raises.

    Dtypes: the weight is cast to ``hidden``'s dtype for the matrix products
    (as flax's ``Dense(dtype=...)`` does), which accumulate in float32
    (``preferred_element_type``); the logits and all statistics are float32
    (float64 for float64 inputs); :math:`\partial\ell/\partial z` is cast to
    ``hidden``'s dtype for the two gradient products, and the ``hidden``
    gradient accumulates in float32. The loss is float32 (float64 for float64
    inputs); gradients have their input's dtype.

    Args:
      hidden: activations of shape ``(..., D)``.
      weight: kernel of shape ``(D, V)`` (flax ``Dense`` convention).
      labels: integer class indices of shape ``hidden.shape[:-1]``, any integer dtype.
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
      logit_softcap: ``c > 0`` replaces the logits by ``c * tanh(z / c)``
        (Gemma 2's ``final_logit_softcapping``); None (default) for none.

        Each of these three is a Python number, compiled in (0 adds no work),
        or a scalar array, traced ones included (a schedule in a jitted
        step), passed to the fused rule as an operand: its gradient is the
        true one (:math:`\partial\ell/\partial\varepsilon = z_y - \bar z`,
        :math:`\partial\ell/\partial\zeta = \operatorname{lse}(z)^2`, and
        :math:`\sum_k \partial\ell/\partial z_k\,(t_k - (x_k/c)(1 - t_k^2))`
        for the cap), for both methods. A concrete value out of range raises a
        ValueError; a traced one makes the loss NaN, and raises under
        ``jax.experimental.checkify``.
      chunk_size: vocabulary columns per chunk of ``"recompute"``. Its
        temporary memory is a few ``N x chunk_size`` float32 arrays.
      method: ``"recompute"`` keeps O(N) values from the forward pass and
        recomputes each chunk's logits in the backward pass (four ``N D V``
        products, any cotangent). ``"precompute"`` computes all gradients in
        the forward pass over blocks of rows whose logits take at most
        ``BLOCK_BYTES`` (56 MiB) and scales them by the cotangent in the
        backward pass (three products; only for ``reduction="sum"`` or
        ``"mean"``; keeps one float32 gradient of the weight's size, plus
        ``hidden``'s, between the passes). Without a gradient both run the
        forward statistics only (one product). ``"auto"`` (default) takes
        ``"precompute"`` for a scalar loss without ``return_aux`` when the
        weight-sized buffer is at most ``AUTO_PRECOMPUTE_MAX_BYTES`` (1 GiB),
        else ``"recompute"``.
      return_aux: also return a :class:`LinearCrossEntropyAux` of per-example
        ``logsumexp``, ``label_logprob`` (both differentiable) and ``correct``.

    Returns:
      The loss: shape ``labels.shape`` for ``reduction="none"``, else a scalar;
      with ``return_aux=True``, the pair ``(loss, aux)``.

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
      Hsu et al., `Liger Kernel: Efficient Triton Kernels for LLM Training
      <https://arxiv.org/abs/2410.10989>`_, 2024.
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
        logit_softcap,
        chunk_size,
        method,
        return_aux,
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
    logit_softcap,
    chunk_size,
    method,
    return_aux,
):
    """Checks the arguments, then runs the fused rule (on one device or a shard)."""
    ignore_index, chunk_size, numeric = _check_options(
        fname,
        reduction,
        label_smoothing,
        z_loss,
        ignore_index,
        logit_softcap,
        chunk_size,
        method,
        return_aux,
    )
    hidden = jnp.asarray(hidden)
    weight = jnp.asarray(weight)
    labels = jnp.asarray(labels)
    bias = None if bias is None else jnp.asarray(bias)
    _check_linear_args(fname, hidden, weight, labels, bias, axis_name is not None)
    st, opts, valid = _static_and_operands(chunk_size, axis_name, ignore_index, numeric)
    try:
        hash(st)
    except TypeError:
        raise ValueError(f"{fname}: `axis_name` must be hashable, got {axis_name!r}.") from None
    return _fused_loss(hidden, weight, bias, labels, opts, valid, st, reduction, method, return_aux)


def _check_linear_args(fname, hidden, weight, labels, bias, sharded):
    """Shape and dtype checks of the fused linear cross-entropy's arrays."""
    w, b = ("local_weight", "local_bias") if sharded else ("weight", "bias")
    for name, x in (("hidden", hidden), (w, weight)) + (() if bias is None else ((b, bias),)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{fname}: `{name}` must have a floating dtype, got {x.dtype}.")
    if hidden.ndim < 1 or weight.ndim != 2 or weight.shape[0] != hidden.shape[-1]:
        raise ValueError(
            f"{fname}: `{w}` must have shape (D, V) with D = hidden.shape[-1]; got hidden shape "
            f"{hidden.shape} and {w} shape {weight.shape}."
        )
    if weight.shape[1] == 0:
        raise ValueError(
            f"{fname}: `{w}` of shape {weight.shape} has no vocabulary columns (V = 0)."
        )
    if bias is not None and bias.shape != (weight.shape[1],):
        raise ValueError(
            f"{fname}: `{b}` must have shape (V,) = {(weight.shape[1],)}, got {b} shape "
            f"{bias.shape}."
        )
    _check_labels(fname, labels, hidden.shape[:-1], "hidden")
