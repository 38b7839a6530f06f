r"""Softmax cross-entropy with a fused, closed-form gradient.

One loss serves every option. With effective targets ``y`` (they absorb class
weights and label smoothing) the loss of one example is

.. math::

  L(z, y) = \sum_c y_c \, (\operatorname{lse}(z) - z_c),
  \qquad
  \frac{\partial L}{\partial z_c} = p_c \sum_k y_k - y_c,

so for a one-hot or probability target (``sum(y) = 1``) the gradient is the
familiar ``p - y``. :func:`_xent` computes it in one ``jax.custom_vjp``: the
forward pass only reduces over the classes, the backward pass writes the
closed form above in one sweep. The same values without the custom rule are
:func:`_xent_values`, which JAX differentiates by itself (``fused=False``).

Accuracy: ``lse(z) - z_c`` is computed as ``(m - z_c) + log1p(rest)``, a sum
of two non-negative terms (see :mod:`jaxsce._logsumexp`), and the gradient of
the largest class as ``(e K - y) - y rest`` over ``1 + rest``, which is
``-rest / (1 + rest)`` exactly when the target is one-hot on it. Neither
loses the tiny ``1 - p`` of a confident prediction.

One weighted label per example, the common case, takes a faster route with
the same accuracy (:func:`_label_values`): the label, not the largest class,
is left out of the sum, by its index, and ``lse - z_y = log1p(T / E)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsce._checks import check_array_option, class_indices, labels_ignored
from jaxsce._logsumexp import (
    LABEL_COLUMNS,
    Axis,
    by_columns,
    classes_last,
    compute_dtype,
    computed_once,
    exp_shifted,
    mask_logits,
    max_and_rest,
    normalize_axes,
    row_shift,
    row_sum_of,
    scaled_exp,
)

REDUCTIONS = ("none", "sum", "mean")
SMOOTHINGS = ("torch", "t5x")


class Targets(NamedTuple):
    """Effective targets ``y = dense + label_weight * onehot(labels) + smooth_weight * u``.

    ``u`` is 1 (or ``class_weights``) on every valid class and 0 on masked ones.
    Any part may be None. Shapes: ``dense`` ``(..., C)``; ``labels``,
    ``label_weight``, ``smooth_weight`` ``(...,)``; ``class_weights`` ``(C,)``.
    """

    dense: jax.Array | None = None
    labels: jax.Array | None = None
    label_weight: jax.Array | None = None
    smooth_weight: jax.Array | None = None
    class_weights: jax.Array | None = None


def _target_nll(y: jax.Array, nll: jax.Array) -> jax.Array:
    """``nll`` with ``+inf`` read as 0 where ``y == 0``: a class without target mass.

    This is also ``dL/dy``: ``lse - z_c`` wherever it is finite (at ``y = 0``
    too), and 0 on a masked or ``-inf`` class that carries no target mass.
    """
    return jnp.where((y == 0) & (nll == jnp.inf), 0.0, nll)


def _xmul(y: jax.Array, nll: jax.Array) -> jax.Array:
    """``y * nll`` with ``0 * inf = 0``: a class without target mass costs nothing.

    Written as a product, so that its derivative in ``y`` at ``y = 0`` is the
    finite ``nll`` (a guard ``where(y == 0, 0, y * nll)`` would make it 0).
    """
    return y * _target_nll(y, nll)


def _uniform(t: Targets, where: jax.Array | None, z: jax.Array) -> jax.Array:
    """The smoothing part's class profile ``u``, broadcastable to ``z``."""
    if t.class_weights is None:
        u = jnp.ones((), z.dtype)
    else:
        u = jnp.broadcast_to(t.class_weights.astype(z.dtype), z.shape)
    return u if where is None else jnp.where(where, u, 0.0)


def _onehot(labels: jax.Array, z: jax.Array) -> jax.Array:
    """One-hot rows by comparison with an iota (no scatter)."""
    iota = jax.lax.broadcasted_iota(labels.dtype, z.shape, z.ndim - 1)
    return iota == labels[..., None]


def _off_label(labels: jax.Array, shape, dtype, first=0) -> jax.Array:
    """``min(|k - y|, 1)`` in ``dtype``: 0 on each row's label, 1 on every other class.

    The arithmetic form of ``1 - onehot``, which XLA's CPU kernels run faster
    than a comparison and a select. ``k = first + j`` is the class index of
    column ``j`` of ``shape``; ``dtype`` must hold every index exactly, and
    ``labels`` lie within one step of their range (``k - y`` cannot overflow).
    """
    iota = jax.lax.broadcasted_iota(dtype, shape, len(shape) - 1)
    index = jnp.asarray(first).astype(dtype) + iota
    return jnp.minimum(jnp.abs(index - labels.astype(dtype)[..., None]), 1)


def _dense_targets(t: Targets, where: jax.Array | None, z: jax.Array) -> jax.Array:
    """Writes the effective targets out as a ``(..., C)`` array (fused by XLA)."""
    y = jnp.zeros_like(z) if t.dense is None else t.dense.astype(z.dtype)
    if t.labels is not None:
        a = 1.0 if t.label_weight is None else t.label_weight[..., None].astype(z.dtype)
        # Labels out of range, clipped to one step outside it, match nothing.
        y_k = jnp.clip(t.labels, -1, z.shape[-1])
        y = y + a * (1 - _off_label(y_k, z.shape, y_k.dtype).astype(z.dtype))
    if t.smooth_weight is not None:
        y = y + t.smooth_weight[..., None].astype(z.dtype) * _uniform(t, where, z)
    return y


def _target_total(t: Targets, where: jax.Array | None, z: jax.Array) -> jax.Array:
    """``(...,)`` the sum over classes of the effective targets, ``sum(y)``."""
    total = jnp.zeros(z.shape[:-1], z.dtype)
    if t.labels is not None:
        total = total + (1.0 if t.label_weight is None else t.label_weight.astype(z.dtype))
    if t.dense is not None:
        total = total + jnp.sum(t.dense.astype(z.dtype), axis=-1)
    if t.smooth_weight is not None:
        u = jnp.broadcast_to(_uniform(t, where, z), z.shape)
        total = total + t.smooth_weight.astype(z.dtype) * jnp.sum(u, axis=-1)
    return total


def _bad_labels(t: Targets, z: jax.Array) -> jax.Array:
    """``(...,)`` True where a label lies outside ``[0, C)``."""
    if t.labels is None:
        return jnp.zeros(z.shape[:-1], bool)
    return (t.labels < 0) | (t.labels >= z.shape[-1])


def _softcap(z: jax.Array, cap: float | jax.Array | None) -> jax.Array:
    """Gemma 2's logit soft-capping ``cap * tanh(z / cap)`` (identity for None).

    The ``min`` with ``cap`` changes no value (``tanh <= 1``). It keeps the
    product rounded: XLA recomputes the capped logits in each kernel that
    reads them, and LLVM would contract ``m - cap * tanh`` into one FMA in
    some of them, so that the largest logit ``m`` found by one kernel no
    longer equals itself in another (the exact exclusion of the largest
    class compares them).
    """
    return z if cap is None else jnp.minimum(cap * jnp.tanh(z / cap), cap)


def _capped(z: jax.Array, where: jax.Array | None, cap: float | None) -> jax.Array:
    """The logits the loss sees: upcast, soft-capped, masked entries ``-inf``."""
    return mask_logits(_softcap(z.astype(compute_dtype(z.dtype)), cap), where)


def _xent_values(z: jax.Array, where: jax.Array | None, t: Targets, cap: float | None = None):
    """The loss, its log-sum-exp and whether the target's class scores highest.

    Args:
      z: ``(..., C)`` logits (any float dtype; computed in at least float32).
      where: ``(..., C)`` boolean mask of valid classes, or None.
      t: the effective targets.
      cap: soft-cap ``c`` (logits become ``c tanh(z / c)``), or None.

    Returns:
      ``(ce, lse, correct)``, each ``(...,)``. ``ce`` is NaN where a label lies
      outside ``[0, C)``.
    """
    z = _capped(z, where, cap)
    s = max_and_rest(z)
    log1p_rest = jnp.log1p(s.rest)
    ce = jnp.zeros(z.shape[:-1], z.dtype)
    if t.labels is not None:
        safe = jnp.clip(t.labels, 0, z.shape[-1] - 1)
        z_y = jnp.take_along_axis(z, safe[..., None], axis=-1)[..., 0]
        a = jnp.ones((), z.dtype) if t.label_weight is None else t.label_weight.astype(z.dtype)
        ce = ce + _xmul(a, (s.shift - z_y) + log1p_rest)
        correct = z_y >= s.shift
    if t.dense is not None or t.smooth_weight is not None:
        nll = (s.shift[..., None] - z) + log1p_rest[..., None]
        if t.dense is not None:
            ce = ce + jnp.sum(_xmul(t.dense.astype(z.dtype), nll), axis=-1)
            if t.labels is None:
                k = jnp.argmax(t.dense, axis=-1)
                correct = jnp.take_along_axis(z, k[..., None], axis=-1)[..., 0] >= s.shift
        if t.smooth_weight is not None:
            smooth = jnp.sum(_xmul(_uniform(t, where, z), nll), axis=-1)
            ce = ce + _xmul(t.smooth_weight.astype(z.dtype), smooth)
    bad = _bad_labels(t, z)
    ce = jnp.where(bad, jnp.nan, ce)
    correct = correct & ~s.empty & ~bad
    return (ce, s.logsumexp, correct), (s, z)


def _is_16bit(z: jax.Array) -> bool:
    """Whether ``z`` is stored narrower than jaxsce computes (16-bit floats)."""
    return compute_dtype(z.dtype) != z.dtype


def _labels_only(where: jax.Array | None, t: Targets, cap: float | None) -> bool:
    """Whether the targets are one weighted label per example, nothing else (static)."""
    return (
        t.labels is not None
        and t.dense is None
        and t.smooth_weight is None
        and where is None
        and cap is None
    )


def _label_logit(z: jax.Array, labels: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """The labels as valid indices (out-of-range ones clipped) and their logits in ``dtype``."""
    safe = jnp.clip(labels, 0, z.shape[-1] - 1)
    if _is_16bit(z):
        # Else XLA gathers from a float32 copy of the whole array, made to share
        # the conversion with the kernels that upcast the logits.
        z = jax.lax.optimization_barrier(z)
    z_y = jnp.take_along_axis(z, safe[..., None], axis=-1, mode="promise_in_bounds")[..., 0]
    return safe, z_y.astype(dtype)


ARITHMETIC_CLASSES = 4096  # rows up to which _label_terms leaves the label out arithmetically


def _label_terms(z: jax.Array, labels: jax.Array, m: jax.Array):
    r"""``u_k = e^{z_k - a} e^{a - m}`` with the label's entry set to 0, and its sum.

    With :func:`scaled_exp` (the exact shift ``a``) the subtraction is exact, so every
    ``u_k`` carries the rounding of one ``exp`` and one product, whatever the
    margin; the row scale ``e^{a - m}`` keeps the terms at most 1. The label's
    entry is taken out by index, so that its sum ``T`` is the other classes'
    alone, without the cancellation of subtracting it from the full sum (and
    ties with the label count as they should): in rows of up to
    ``ARITHMETIC_CLASSES`` classes by the factor ``min(|k - y|, 1)``, 0 on it
    and 1 elsewhere, which XLA's CPU kernel runs faster there than a select;
    in longer rows by the select, faster there (both measured).

    Returns:
      ``(u, T, E, z_y)``: ``u`` ``(..., C)``; ``T = sum_{k != y} u_k``,
      ``E = e^{z_y - a} e^{a - m}`` and the label's logit, each ``(...,)``.
    """
    safe, z_y = _label_logit(z, labels, m.dtype)
    e = scaled_exp(z.astype(m.dtype), m)
    if z.shape[-1] <= ARITHMETIC_CLASSES:
        u = e * _off_label(safe, z.shape, safe.dtype).astype(m.dtype)
    else:
        u = jnp.where(_onehot(safe, z), 0.0, e)
    return u, jnp.sum(u, axis=-1), scaled_exp(z_y[..., None], m)[..., 0], z_y


LABEL_BLOCK = 256  # classes per block in the forward-only sum of a long row


def _label_total(z: jax.Array, labels: jax.Array, m: jax.Array):
    """``(T, E, z_y)`` of :func:`_label_terms` without writing ``u`` out.

    For value-only calls, and for 16-bit logits with a backward pass.
    The label is taken out arithmetically (``min(|k - y|, 1)`` is 0 on it and 1
    elsewhere), so that XLA sums in one fused pass over the logits. In a row
    longer than ``4 LABEL_BLOCK`` that runs on the label's block only and the
    other blocks are summed plainly; not for 16-bit logits, which XLA would
    upcast to a float32 copy for the blocked sum.
    """
    num_classes, cd = z.shape[-1], m.dtype
    safe, z_y = _label_logit(z, labels, cd)
    e_y = scaled_exp(z_y[..., None], m)[..., 0]

    # The class index in the compute dtype where that holds every index exactly
    # (XLA's fused sum of 16-bit logits measured 2x slower with integers), else
    # in integers: a float32 index would merge classes past 2^24.
    exact = num_classes <= 2 ** (jnp.finfo(cd).nmant + 1)
    index_dtype = cd if exact else safe.dtype

    def others(x, first, label):  # sum of e^{x - m} over entries whose index is not `label`
        off = _off_label(label, x.shape, index_dtype, first).astype(cd)
        return jnp.sum(scaled_exp(x.astype(cd), m) * off, axis=-1)

    block = LABEL_BLOCK
    if num_classes <= 4 * block or _is_16bit(z):
        return others(z, 0, safe), e_y, z_y
    # Every block but the label's, summed plainly; then the label's, without it.
    sums = scaled_exp(z.astype(cd), m)
    window = (1,) * (z.ndim - 1) + (block,)
    padding = ((0, 0),) * (z.ndim - 1) + ((0, -num_classes % block),)
    sums = jax.lax.reduce_window(sums, np.zeros((), cd)[()], jax.lax.add, window, window, padding)
    k = safe // block
    ids = jax.lax.broadcasted_iota(k.dtype, sums.shape, sums.ndim - 1)
    rest = jnp.sum(jnp.where(ids == k[..., None], 0.0, sums), axis=-1)
    index = k[..., None] * block + jax.lax.broadcasted_iota(k.dtype, k.shape + (block,), k.ndim)
    inside = jnp.minimum(index, num_classes - 1)
    x = jnp.take_along_axis(z, inside, axis=-1, mode="promise_in_bounds")
    x = jnp.where(index < num_classes, x, -jnp.inf)
    return rest + others(x, k[..., None] * block, safe), e_y, z_y


def _label_columns(z: jax.Array, labels: jax.Array, m: jax.Array, width: int):
    """``(T, E, z_y)`` of :func:`_label_terms` by columns, or blocks of ``width`` columns.

    The label's entry is left out by comparing its index with each column's
    (:func:`row_sum_of`), and its logit is gathered (a sum of selects would
    read every column a second time).
    """
    safe, z_y = _label_logit(z, labels, m.dtype)
    a, scale = row_shift(m)

    def other(z, k, y, a, scale):
        return jnp.where(k == y, 0.0, jnp.exp(z - a) * scale)

    total = row_sum_of(other, width, z, safe, a, scale)
    total = computed_once(total, a)
    return total, jnp.exp(z_y - a) * scale, z_y


def _label_values(z: jax.Array, t: Targets, without_u: bool = False):
    """:func:`_xent_values` for one weighted label per example, from :func:`_label_terms`.

    ``lse - z_y = log1p(T / E)``: a sum of positive terms, no cancellation
    for a confident prediction. Where ``T / E`` overflows (the label far
    below the largest logit) it is ``(m - z_y) + log(T)`` instead.
    ``without_u`` (static): sum ``T`` without writing ``u`` out, by columns
    where :func:`by_columns` allows (:func:`_label_columns`), else in one
    fused pass (:func:`_label_total`).
    """
    assert t.labels is not None  # see _labels_only
    # Logits stay in their dtype: max and gather are exact in 16 bits, and each
    # fused kernel upcasts what it reads (no float32 copy of 16-bit logits).
    cd = compute_dtype(z.dtype)
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1)).astype(cd)
    width = by_columns(z, LABEL_COLUMNS) if without_u else 0
    if width:
        total, e_y, z_y = _label_columns(z, t.labels, m, width)
    elif without_u:
        total, e_y, z_y = _label_total(z, t.labels, m)
    else:
        _, total, e_y, z_y = _label_terms(z, t.labels, m)
    q = total / e_y
    finite = q < jnp.inf
    nll = jnp.where(finite, jnp.log1p(q), (m - z_y) + jnp.log(total))
    lse = jnp.where(finite, z_y + jnp.log1p(q), m + jnp.log(total))
    empty = m == -jnp.inf
    nll = jnp.where(empty, jnp.inf, nll)
    lse = jnp.where(empty, -jnp.inf, lse)
    w = jnp.ones((), cd) if t.label_weight is None else t.label_weight.astype(cd)
    bad = _bad_labels(t, z)
    ce = jnp.where(bad, jnp.nan, _xmul(w, nll))
    correct = (z_y >= m) & ~empty & ~bad
    return (ce, lse, correct), (m, total, e_y, nll)


def _label_bwd(z_in, t, res, g):
    """The fused backward pass of :func:`_label_values`.

    ``dz = (g w + g_lse) p - g w onehot``, with ``p_k = u_k / (T + E)``; on
    the label, ``(g_lse E - g w T) / (T + E)`` (no cancellation).
    """
    m, total, e_y, nll = res
    g_ce, g_lse, _ = g
    assert t.labels is not None  # see _labels_only
    z = z_in
    w = jnp.ones((), m.dtype) if t.label_weight is None else t.label_weight.astype(m.dtype)
    if _is_16bit(z):
        # Recomputed from the 16-bit logits, not shared with the forward pass
        # (the barrier keeps XLA from merging the two): no float32 array. The
        # plain shift suffices here: its rounding (|z - m| 2^-25, under 3e-6
        # where exp is a normal float) is far below a 16-bit gradient's ulp,
        # and the exact shift's per-row table would be evaluated per logit.
        z_b, m_b = jax.lax.optimization_barrier((z, m))
        u = jnp.exp(z_b.astype(m.dtype) - jnp.where(m_b == -jnp.inf, 0.0, m_b)[..., None])
    else:
        u, _, _, _ = _label_terms(z, t.labels, m)  # the forward pass's array (XLA shares it)
    inv = 1.0 / (total + e_y)
    scale = (g_ce * w + g_lse) * inv
    at_label = (g_lse * e_y - g_ce * w * total) * inv
    bad = _bad_labels(t, z)
    # Rows whose loss does not reach the output get exactly 0, NaN logits too.
    zero = ((g_ce == 0) & (g_lse == 0)) | (m == -jnp.inf)
    scale = jnp.where(zero, 0.0, jnp.where(bad, jnp.nan, scale))
    at_label = jnp.where(zero, 0.0, jnp.where(bad, jnp.nan, at_label))
    dz = jnp.where(scale[..., None] == 0, 0.0, u * scale[..., None])
    safe = jnp.clip(t.labels, 0, z.shape[-1] - 1)  # as in _label_logit
    dz = jnp.where(_onehot(safe, z), at_label[..., None], dz)
    dw = None if t.label_weight is None else (g_ce * nll).astype(t.label_weight.dtype)
    dt = Targets(dense=None, label_weight=dw, smooth_weight=None, class_weights=None)
    return dz.astype(z_in.dtype), None, dt


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _xent(z: jax.Array, where: jax.Array | None, t: Targets, cap: float | None = None):
    """:func:`_xent_values` with the fused backward pass ``g (p sum(y) - y)``.

    With a soft-cap the chain rule runs inside the same pass: the gradient
    with respect to the raw logits is ``g (p sum(y) - y) (1 - tanh^2(z / c))``,
    with ``tanh`` recomputed from the raw logits (no residual of size N x C).
    One weighted label per example (the common case) takes the faster
    :func:`_label_values` and :func:`_label_bwd`.
    """
    if _labels_only(where, t, cap):
        # Value only: one fused sum, no array `u` (writing it costs more than
        # the sum's extra operations, and for 16-bit logits it would be a
        # float32 array twice their size). Short rows go by columns.
        return _label_values(z, t, without_u=True)[0]
    return _xent_values(z, where, t, cap)[0]


def _xent_fwd(z, where, t, cap):
    if _labels_only(where, t, cap):
        # float32: the backward pass reuses the forward pass's array `u` (XLA
        # shares it and writes the gradient over it). 16-bit: `u` would be a
        # float32 array twice the logits' size that no gradient can overwrite;
        # the forward pass sums without it (by columns where it can: up to 15
        # classes) and the backward pass recomputes it.
        out, res = _label_values(z, t, without_u=_is_16bit(z))
        return out, (z, where, t, *res)
    out, (s, _) = _xent_values(z, where, t, cap)
    # Residuals: the inputs themselves and three numbers per example.
    return out, (z, where, t, s.shift, s.rest, s.empty)


def _xent_bwd(cap, res, g):
    z_in, where, t = res[:3]
    if _labels_only(where, t, cap):
        return _label_bwd(z_in, t, res[3:], g)
    shift, rest, empty = res[3:]
    g_ce, g_lse, _ = g  # `correct` is boolean: it has no cotangent.
    z = _capped(z_in, where, cap)
    g_ce, g_lse = g_ce[..., None], g_lse[..., None]
    rest, shift = rest[..., None], shift[..., None]
    e = exp_shifted(z, shift)  # p = e / (1 + rest); e = 1 on the largest logit
    y = _dense_targets(t, where, z)
    k = g_ce * _target_total(t, where, z)[..., None] + g_lse
    # g (p K - y) written as ((e K - g y) - g y rest) / (1 + rest): on a one-hot
    # target at the largest logit it is exactly -g rest / (1 + rest).
    dz = ((e * k - g_ce * y) - g_ce * y * rest) / (1 + rest)
    dz = jnp.where(empty[..., None], 0.0, dz)
    dz = jnp.where(_bad_labels(t, z)[..., None], jnp.nan, dz)
    # A row whose loss does not reach the output (ignored, weight 0) has a
    # gradient of exactly 0, NaN or inf logits included.
    dz = jnp.where((g_ce == 0) & (g_lse == 0), 0.0, dz)
    if where is not None:
        dz = jnp.where(where, dz, 0.0)
    if cap is not None:
        tanh = jnp.tanh(z_in.astype(z.dtype) / cap)
        dz = dz * (1 - tanh * tanh)

    # Cotangents of the float targets: dL/dy_c = lse - z_c.
    def nll():
        return (shift - z) + jnp.log1p(rest)

    dt = Targets(
        dense=None
        if t.dense is None
        else (g_ce * _target_nll(t.dense.astype(z.dtype), nll())).astype(t.dense.dtype),
        label_weight=None,
        smooth_weight=None,
        class_weights=None,
    )
    if t.labels is not None and t.label_weight is not None:
        safe = jnp.clip(t.labels, 0, z.shape[-1] - 1)
        nll_y = jnp.take_along_axis(nll(), safe[..., None], axis=-1)[..., 0]
        dt = dt._replace(label_weight=(g_ce[..., 0] * nll_y).astype(t.label_weight.dtype))
    if t.smooth_weight is not None:
        u_nll = _xmul(_uniform(t, where, z), nll())
        dt = dt._replace(
            smooth_weight=(g_ce[..., 0] * jnp.sum(u_nll, -1)).astype(t.smooth_weight.dtype)
        )
        if t.class_weights is not None:
            valid_nll = nll() if where is None else jnp.where(where, nll(), 0.0)
            terms = g_ce * t.smooth_weight[..., None].astype(z.dtype) * valid_nll
            dcw = jnp.sum(terms.reshape(-1, z.shape[-1]), axis=0)
            dt = dt._replace(class_weights=dcw.astype(t.class_weights.dtype))
    return dz.astype(z_in.dtype), None, dt


_xent.defvjp(_xent_fwd, _xent_bwd)


# -- public functions --------------------------------------------------------


class CrossEntropyAux(NamedTuple):
    """What the loss computed on the way, returned with ``return_aux=True``.

    Attributes:
      logsumexp: ``(...,)`` per-example ``lse(logits)`` (differentiable).
      z_loss: ``(...,)`` per-example ``z_loss * lse^2`` (0 for ignored examples).
      correct: ``(...,)`` bool, the target's class has the largest logit (ties
        count as correct; for probability targets, the argmax class of the
        targets as given, before class weights and smoothing).
      num_counted: scalar, the number of examples counted (not ignored, not
        fully masked).
      denominator: scalar, what ``reduction="mean"`` divides the sum by (the
        ``normalizer`` when one is given).
    """

    logsumexp: jax.Array
    z_loss: jax.Array
    correct: jax.Array
    num_counted: jax.Array
    denominator: jax.Array


def _check_options(fname, reduction, normalizer, label_smoothing, smoothing, z_loss):
    """Raises ValueError naming a bad option and its value (static options only).

    The linear and vocab-parallel losses use this one; the softmax losses use
    :func:`_numeric_option` so that their numeric options may be arrays.
    """
    _check_structure(fname, reduction, smoothing)
    if normalizer is not None:
        if reduction != "mean":
            raise ValueError(
                f"{fname}: `normalizer` replaces the denominator of reduction='mean';"
                f" got reduction={reduction!r}."
            )
        if isinstance(normalizer, numbers.Real) and not normalizer > 0:
            raise ValueError(f"{fname}: `normalizer` must be > 0, got normalizer={normalizer!r}.")
    if not isinstance(label_smoothing, numbers.Real) or not 0 <= label_smoothing <= 1:
        raise ValueError(
            f"{fname}: `label_smoothing` must be a number in [0, 1],"
            f" got label_smoothing={label_smoothing!r}."
        )
    if not isinstance(z_loss, numbers.Real) or not (math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"{fname}: `z_loss` must be a finite number >= 0, got z_loss={z_loss!r}.")


def _check_softcap(fname: str, logit_softcap):
    """``logit_softcap`` as ``(static float or None, array or None, valid)``."""
    if logit_softcap is None:
        return None, None, None
    return _numeric_option(fname, "logit_softcap", logit_softcap)


def _check_structure(fname, reduction, smoothing):
    """The static options that choose the computation."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"{fname}: `reduction` must be one of {REDUCTIONS}, got reduction={reduction!r}."
        )
    if not isinstance(smoothing, str) or smoothing not in SMOOTHINGS:
        raise ValueError(f"{fname}: `smoothing` must be one of {SMOOTHINGS}, got {smoothing!r}.")


# name -> (what a value must satisfy, elementwise; how the message says it)
_NUMERIC = {
    "label_smoothing": (lambda x: (x >= 0) & (x <= 1), "a number in [0, 1]"),
    "z_loss": (lambda x: (x >= 0) & (x < math.inf), "a finite number >= 0"),
    "normalizer": (lambda x: (x > 0) & (x < math.inf), "a finite number > 0"),
    "class_weights": (lambda x: (x >= 0) & (x < math.inf), "finite and non-negative"),
    "logit_softcap": (lambda x: (x > 0) & (x < math.inf), "None or a finite number > 0"),
}


def _numeric_option(fname: str, name: str, value):
    """A scalar numeric option: ``(static, array, valid)``.

    A Python (or NumPy) number is checked at once and returned as the static
    float: the computation is specialised to it (0 adds no work). Anything
    else is a scalar array, possibly traced: checked by
    :func:`jaxsce._checks.check_array_option` and returned as ``array``;
    ``valid`` is its traced predicate (None when checked already).
    """
    ok, expected = _NUMERIC[name]
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not ok(float(value)):
            raise ValueError(f"{fname}: `{name}` must be {expected}, got {name}={value!r}.")
        return float(value), None, None
    try:
        array = jnp.asarray(value)
    except TypeError:
        array = None
    if array is None or not (
        jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)
    ):
        raise ValueError(f"{fname}: `{name}` must be {expected}, got {name}={value!r}.")
    if array.shape != ():
        raise ValueError(f"{fname}: `{name}` must be a scalar (shape ()), got shape {array.shape}.")
    return None, array, check_array_option(fname, name, array, ok, expected)


def _all_valid(*valid) -> jax.Array | None:
    """The conjunction of the traced checks that apply (None if there are none)."""
    valid = tuple(v for v in valid if v is not None)
    return None if not valid else functools.reduce(jnp.logical_and, valid)


def _check_logits(fname: str, logits: ArrayLike) -> jax.Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"{fname}: `logits` must be a floating-point array, got dtype {logits.dtype}."
        )
    return logits


def _class_axes(fname, logits, axis):
    """The class axes, the batch shape and the number of classes (at least 1)."""
    try:
        axes = normalize_axes(axis, logits.ndim)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{fname}: {e}") from None
    batch_shape = tuple(d for i, d in enumerate(logits.shape) if i not in axes)
    num_classes = math.prod(logits.shape[a] for a in axes)
    if num_classes == 0:
        raise ValueError(
            f"{fname}: `logits` of shape {logits.shape} have no classes on axis {axis}."
        )
    return axes, batch_shape, num_classes


def _check_where(fname, where, logits, axes) -> jax.Array | None:
    """``where`` broadcast to the logits' shape.

    As in optax, a mask of lower rank than ``logits`` is a per-example mask of
    the batch shape: it is expanded over the class axes. A mask of the logits'
    rank broadcasts as usual (``(1, C)`` is a class mask).
    """
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"{fname}: `where` must be a boolean array, got dtype {where.dtype}.")
    given = where.shape
    if where.ndim != logits.ndim:
        if where.ndim != logits.ndim - len(axes):
            raise ValueError(
                f"{fname}: `where` must have the rank of `logits` ({logits.ndim}), or the"
                f" rank of the batch shape ({logits.ndim - len(axes)}) for a per-example mask"
                f" (optax); got shape {given}."
            )
        where = jnp.expand_dims(where, tuple(sorted(axes)))
    try:
        return jnp.broadcast_to(where, logits.shape)
    except ValueError:
        raise ValueError(
            f"{fname}: `where` of shape {given} does not broadcast to `logits` of"
            f" shape {logits.shape} (a mask of lower rank is a per-example mask of the"
            " batch shape, as in optax; for a class mask give shape (1, C))."
        ) from None


def _check_class_weights(fname, class_weights, num_classes):
    """``(class_weights, valid)``: the array and its traced check (see _numeric_option)."""
    if class_weights is None:
        return None, None
    class_weights = jnp.asarray(class_weights)
    if not jnp.issubdtype(class_weights.dtype, jnp.floating):
        raise TypeError(
            f"{fname}: `class_weights` must be a floating-point array, got dtype"
            f" {class_weights.dtype}."
        )
    if class_weights.shape != (num_classes,):
        raise ValueError(
            f"{fname}: `class_weights` must have shape ({num_classes},) (one weight per"
            f" class), got shape {class_weights.shape}."
        )
    ok, expected = _NUMERIC["class_weights"]
    return class_weights, check_array_option(fname, "class_weights", class_weights, ok, expected)


def _check_sample_weights(fname, sample_weights, batch_shape):
    if sample_weights is None:
        return None
    sample_weights = jnp.asarray(sample_weights)
    if not (
        jnp.issubdtype(sample_weights.dtype, jnp.floating)
        or jnp.issubdtype(sample_weights.dtype, jnp.integer)
    ):
        raise TypeError(
            f"{fname}: `sample_weights` must be a real array, got dtype {sample_weights.dtype}."
        )
    try:
        return jnp.broadcast_to(sample_weights, batch_shape)
    except ValueError:
        raise ValueError(
            f"{fname}: `sample_weights` of shape {sample_weights.shape} does not broadcast"
            f" to the batch shape {batch_shape}."
        ) from None


def _check_normalizer(fname, normalizer, reduction):
    """``(array or None, valid)``: a scalar > 0, with ``reduction="mean"`` only."""
    if normalizer is None:
        return None, None
    if reduction != "mean":
        raise ValueError(
            f"{fname}: `normalizer` replaces the denominator of reduction='mean';"
            f" got reduction={reduction!r}."
        )
    static, array, valid = _numeric_option(fname, "normalizer", normalizer)
    return (jnp.asarray(static) if array is None else array), valid


def _num_valid_classes(where, z):
    """Per-example number of classes that count (the ``C`` of label smoothing)."""
    if where is None:
        return jnp.full(z.shape[:-1], z.shape[-1], z.dtype)
    return jnp.sum(where, axis=-1).astype(z.dtype)


def _finish(
    ce,
    lse,
    correct,
    keep,
    weight,
    denominator,
    normalizer,
    valid,
    *,
    z_loss,
    reduction,
    return_aux,
):
    """Adds the z-loss, drops ignored examples, weights and reduces.

    ``z_loss`` is a Python float (0 adds no work) or a scalar array; ``valid``
    is the traced options' check (None: nothing to check), which turns the
    loss into NaN where it fails.
    """
    if isinstance(z_loss, float) and z_loss == 0:
        z_term = jnp.zeros_like(ce)
    else:
        z_term = z_loss * jnp.where(keep, lse, 0.0) ** 2  # no 0 * NaN from ignored rows
    loss = jnp.where(keep, ce + z_term, 0.0)
    if weight is not None:
        loss = _xmul(weight, loss)  # a weight of 0 zeroes an infinite loss too
    if normalizer is not None:
        denominator = normalizer.astype(ce.dtype)
    if reduction == "sum":
        loss = jnp.sum(loss)
    elif reduction == "mean":
        if normalizer is not None:
            loss = jnp.sum(loss) / denominator
        else:
            # Every example ignored: 0 with a zero gradient (PyTorch gives NaN).
            nonzero = denominator > 0
            loss = jnp.where(nonzero, jnp.sum(loss) / jnp.where(nonzero, denominator, 1.0), 0.0)
    if valid is not None:
        loss = jnp.where(valid, loss, jnp.nan)
    if not return_aux:
        return loss
    count = jnp.sum(keep.astype(ce.dtype))
    return loss, CrossEntropyAux(lse, z_term, correct & keep, count, denominator)


def _traced_softcap(z: jax.Array, cap: jax.Array | None) -> jax.Array:
    """A traced (array) soft-cap, applied before the fused rule and differentiated by JAX.

    A Python-number cap goes into the fused rule instead (no N x C residual);
    an array one costs one: the capped logits kept for the backward pass.
    """
    if cap is None:
        return z
    z = z.astype(compute_dtype(z.dtype))
    return _softcap(z, cap.astype(z.dtype))


def _has_class(where):
    """``(...,)`` examples with at least one valid class (all if ``where`` is None)."""
    return None if where is None else jnp.any(where, axis=-1)


@functools.partial(
    jax.jit,
    static_argnames=(
        "axis",
        "ignore_index",
        "reduction",
        "label_smoothing",
        "smoothing",
        "z_loss",
        "return_aux",
        "fused",
        "logit_softcap",
    ),
)
def _integer_labels_impl(
    logits,
    labels,
    where,
    class_weights,
    sample_weights,
    normalizer,
    eps_array,
    zeta_array,
    valid,
    cap_array,
    *,
    axis,
    ignore_index,
    reduction,
    label_smoothing,
    smoothing,
    z_loss,
    return_aux,
    fused,
    logit_softcap,
):
    z = _traced_softcap(classes_last(logits, axis), cap_array)
    where = None if where is None else classes_last(where, axis)
    cd = compute_dtype(logits.dtype)
    num_classes = z.shape[-1]
    keep = ~labels_ignored(labels, ignore_index)
    if where is not None:
        keep = keep & _has_class(where)  # a fully masked example counts for nothing
    # Indices in int32 whatever the labels' dtype (uint8 with 256 classes does
    # not wrap); an out-of-range label becomes -1, which the kernel turns to NaN.
    labels = class_indices(labels, num_classes, keep)
    safe = jnp.clip(labels, 0, num_classes - 1)
    w_y = 1.0 if class_weights is None else class_weights.astype(cd)[safe]
    eps = label_smoothing if eps_array is None else eps_array.astype(cd)
    zeta = z_loss if zeta_array is None else zeta_array.astype(cd)
    t = Targets(labels=labels, label_weight=jnp.broadcast_to(jnp.asarray(w_y, cd), labels.shape))
    entropy = 0.0
    smoothed = eps_array is not None or label_smoothing != 0
    if smoothed:
        n = _num_valid_classes(where, z)
        if smoothing == "torch":
            # (1 - eps) on the label, eps / C spread over every valid class.
            t = t._replace(
                label_weight=(1 - eps) * t.label_weight,
                smooth_weight=eps / n,
                class_weights=class_weights,
            )
        else:
            # T5X: 1 - eps on the label, eps / (C - 1) on each other valid class.
            # With one valid class there is no other class: the target is 1.
            eps = jnp.where(n > 1, eps, 0.0)
            low = eps / jnp.maximum(n - 1, 1)
            t = t._replace(label_weight=(1 - eps) - low, smooth_weight=low)
            entropy = -(
                jax.scipy.special.xlogy(1 - eps, 1 - eps)
                + (n - 1) * jax.scipy.special.xlogy(low, low)
            )
    if not fused and (ignore_index is not None or where is not None):
        # The plain formulation: JAX would carry 0 * NaN from an ignored row.
        z = jnp.where(keep[..., None], z, jnp.zeros((), z.dtype))
    ce, lse, correct = (_xent if fused else _xent_values_only)(z, where, t, logit_softcap)
    if smoothing == "t5x" and smoothed:
        ce = ce - entropy
        # The label must be a possible class: +inf if it is masked or -inf, for
        # every eps (at eps = 1 the split above would give inf - inf).
        zc = _capped(z, where, logit_softcap)
        z_y = jnp.take_along_axis(zc, safe[..., None], axis=-1)[..., 0]
        ce = jnp.where((z_y == -jnp.inf) & ~jnp.isnan(lse) & (labels >= 0), jnp.inf, ce)
    w = keep.astype(cd) * (1.0 if sample_weights is None else sample_weights.astype(cd))
    denominator = jnp.sum(w * (1.0 if class_weights is None else w_y))
    return _finish(
        ce,
        lse,
        correct,
        keep,
        None if sample_weights is None else sample_weights.astype(cd),
        denominator,
        normalizer,
        valid,
        z_loss=zeta,
        reduction=reduction,
        return_aux=return_aux,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "axis",
        "reduction",
        "label_smoothing",
        "z_loss",
        "return_aux",
        "fused",
        "logit_softcap",
    ),
)
def _probabilities_impl(
    logits,
    labels,
    where,
    class_weights,
    sample_weights,
    normalizer,
    eps_array,
    zeta_array,
    valid,
    cap_array,
    *,
    axis,
    reduction,
    label_smoothing,
    z_loss,
    return_aux,
    fused,
    logit_softcap,
):
    z = _traced_softcap(classes_last(logits, axis), cap_array)
    where = None if where is None else classes_last(where, axis)
    cd = compute_dtype(logits.dtype)
    given = classes_last(labels, axis)
    y = given.astype(cd)
    eps = label_smoothing if eps_array is None else eps_array.astype(cd)
    zeta = z_loss if zeta_array is None else zeta_array.astype(cd)
    if eps_array is not None or eps:
        # PyTorch: y <- (1 - eps) y + eps / C over the valid classes.
        u = 1.0 if where is None else where.astype(cd)
        y = (1 - eps) * y + (eps / _num_valid_classes(where, z))[..., None] * u
    if class_weights is not None:
        y = y * jnp.broadcast_to(class_weights.astype(cd), y.shape)
    t = Targets(dense=y)
    ce, lse, correct = (_xent if fused else _xent_values_only)(z, where, t, logit_softcap)
    if return_aux and (class_weights is not None or eps_array is not None or eps):
        # `correct` of the targets as given, not of the weighted or smoothed ones.
        zm = mask_logits(z.astype(cd), where)
        k = jnp.argmax(given, axis=-1)
        z_k = jnp.take_along_axis(zm, k[..., None], axis=-1)[..., 0]
        correct = (z_k >= jnp.max(zm, axis=-1)) & (z_k > -jnp.inf)
    keep = jnp.ones(ce.shape, bool) if where is None else _has_class(where)
    weight = None if sample_weights is None else sample_weights.astype(cd)
    denominator = jnp.sum(keep.astype(cd) if weight is None else jnp.where(keep, weight, 0.0))
    return _finish(
        ce,
        lse,
        correct,
        keep,
        weight,
        denominator,
        normalizer,
        valid,
        z_loss=zeta,
        reduction=reduction,
        return_aux=return_aux,
    )


def _xent_values_only(z, where, t, cap=None):
    """The plain formulation: the same values, differentiated by JAX itself."""
    return _xent_values(z, where, t, cap)[0]


def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    class_weights: ArrayLike | None = None,
    ignore_index: int | None = None,
    sample_weights: ArrayLike | None = None,
    reduction: str = "none",
    normalizer: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    smoothing: str = "torch",
    z_loss: ArrayLike = 0.0,
    return_aux: bool = False,
    fused: bool = True,
    logit_softcap: ArrayLike | None = None,
):
    r"""Softmax cross-entropy with class-index labels; a drop-in for optax's.

    .. math::

      L = w_y \big(\operatorname{lse}(z) - z_y\big)
          + \zeta \operatorname{lse}(z)^2,
      \qquad
      \frac{\partial L}{\partial z} = p \big(\textstyle\sum_c y_c
          + 2 \zeta \operatorname{lse}(z)\big) - y,

    with ``y`` the effective target (``w_y`` on the label, plus the smoothing
    mass) and ``zeta`` the ``z_loss`` coefficient. Without options this is
    ``lse(z) - z_y`` with gradient ``p - onehot(y)``.

    The gradient with respect to ``logits`` comes from one ``jax.custom_vjp``
    whose backward pass is that closed form. It has the dtype of ``logits``;
    the loss is computed and returned in at least float32 (bfloat16 and float16
    logits are upcast). ``fused=False`` selects the plain formulation, with the
    same values, that JAX differentiates by itself: use it for forward mode of
    the loss itself (``jax.jvp``, ``jax.jacfwd``), which a custom_vjp does not
    support. Second derivatives work on both: ``jax.hessian`` (forward mode
    over the fused backward pass, which is plain JAX), Hessian-vector products
    ``jax.jvp(jax.grad(f), ...)`` and ``jax.grad`` of ``jax.grad``.

    Numeric options (``label_smoothing``, ``z_loss``, ``normalizer``,
    ``class_weights``, ``sample_weights``, ``logit_softcap``) may be arrays, traced ones too (a
    schedule inside a jitted step). A Python number is specialised on (0 adds
    no work); an array is an argument of the compiled function. A concrete
    value out of range raises ``ValueError`` at once; a traced one cannot, so
    it is checked by ``jax.experimental.checkify`` (a ``debug_check``) and
    makes the loss NaN.

    Args:
      logits: ``(..., C)`` floating-point logits (the class axis is ``axis``).
      labels: ``(...)`` integer class indices, the shape of ``logits`` without
        ``axis``, of any integer dtype (uint8 labels with 256 classes are
        fine: indices are computed in int32). With several class axes a label
        is a flat (row-major) index into those axes in the order given, as in
        optax.
      axis: the class axis or axes (static): an int, a sequence of ints, or
        None for all axes.
      where: boolean mask. Of the rank of ``logits`` (broadcast to it): False
        classes are left out of the normaliser and of label smoothing's ``C``.
        Of the rank of the batch shape: a per-example mask, as in optax. An
        example with no valid class gives 0 loss and 0 gradient and is not
        counted by ``"mean"``.
      class_weights: ``(C,)`` non-negative weights, PyTorch's ``weight``: the
        loss of an example is scaled by its label's weight (and the smoothing
        mass on class ``c`` by ``w_c``).
      ignore_index: a label value whose examples give 0 loss and 0 gradient
        (for example -100, as in PyTorch). A value the labels' dtype cannot
        hold (-100 for uint8) matches no label. Default: none.
      sample_weights: per-example weights, broadcast to the batch shape. A
        weight of 0 gives 0, even for an infinite loss.
      reduction: ``"none"`` (per-example losses, as optax), ``"sum"`` or
        ``"mean"``. The mean divides the sum by the sum over examples counted
        of ``sample_weight * class_weights[label]`` (both 1 when not given):
        PyTorch's weighted mean. If that is 0 (every example ignored) the mean
        is 0 with a zero gradient (PyTorch returns NaN).
      normalizer: scalar > 0, with ``reduction="mean"``: divide the sum by this
        instead (a fixed token count makes gradient accumulation over
        micro-batches exact).
      label_smoothing: ``eps`` in [0, 1].
      smoothing: ``"torch"`` (default): target ``(1 - eps)`` on the label plus
        ``eps / C`` on every valid class. ``"t5x"``: ``1 - eps`` on the label,
        ``eps / (C - 1)`` on every other valid class, and the entropy of that
        target subtracted so that a perfect prediction scores 0. With one
        valid class the target is 1 on it (the loss is that of ``eps = 0``); a
        label on a masked or ``-inf`` class gives ``+inf`` for every ``eps``.
      z_loss: coefficient ``zeta`` of the auxiliary ``zeta * lse(z)^2`` (PaLM,
        T5X). Its gradient flows through the fused rule.
      return_aux: also return a :class:`CrossEntropyAux` (per-example
        log-sum-exp, z-loss term, correctness, count, mean denominator).
      fused: False to use the plain formulation (see above).
      logit_softcap: ``c > 0`` to soft-cap the logits first, ``z <- c tanh(z / c)``
        (Gemma 2's ``final_logit_softcapping``); the fused gradient includes
        the factor ``1 - tanh^2(z / c)``. Default None: no cap. A capped
        ``-inf`` logit is ``-c``; mask classes with ``where`` instead. An
        array (a traced one too) works as well; it is applied before the
        fused rule, which then keeps the capped logits (one N x C residual).

    Returns:
      The loss: ``(...)`` per example for ``reduction="none"``, else a scalar;
      with ``return_aux``, the pair ``(loss, aux)``. Edge cases: a label outside
      ``[0, C)`` (and not ``ignore_index``) gives NaN for that example's loss
      and gradient row (see :func:`jaxsce.check_labels` for a raised error);
      a label on a masked or ``-inf`` class gives ``+inf``; ``-inf`` logits on
      other classes give a finite loss and a zero gradient there; a row of
      ``-inf`` logits gives ``+inf`` and a zero gradient; NaN or ``+inf``
      logits give NaN (in an ignored example: loss 0 and gradient 0). An
      empty batch gives an empty result (sum and mean: 0).

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
      >>> loss = jaxsce.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 2]))
      >>> loss.round(4)  # log(1 + 2 e^-2), log 3
      Array([0.2395, 1.0986], dtype=float32)

    References:
      PyTorch ``torch.nn.functional.cross_entropy``; optax
      ``softmax_cross_entropy_with_integer_labels``; T5X
      ``losses.cross_entropy_with_logits``.
    """
    fname = "softmax_cross_entropy_with_integer_labels"
    logits = _check_logits(fname, logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"{fname}: `labels` must be integer class indices, got dtype {labels.dtype};"
            " for probability targets use softmax_cross_entropy."
        )
    axes, batch_shape, num_classes = _class_axes(fname, logits, axis)
    if labels.shape != batch_shape:
        raise ValueError(
            f"{fname}: `labels` must have the shape of `logits` without axis {axis}:"
            f" logits {logits.shape} need labels {batch_shape}, got {labels.shape}."
        )
    _check_structure(fname, reduction, smoothing)
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
    ):
        raise TypeError(f"{fname}: `ignore_index` must be an int or None, got {ignore_index!r}.")
    logit_softcap, cap_array, cap_valid = _check_softcap(fname, logit_softcap)
    eps, eps_array, eps_valid = _numeric_option(fname, "label_smoothing", label_smoothing)
    zeta, zeta_array, zeta_valid = _numeric_option(fname, "z_loss", z_loss)
    normalizer, norm_valid = _check_normalizer(fname, normalizer, reduction)
    if smoothing == "t5x" and class_weights is not None and (eps_array is not None or eps):
        raise ValueError(f"{fname}: `class_weights` are not defined for smoothing='t5x'.")
    class_weights, cw_valid = _check_class_weights(fname, class_weights, num_classes)
    return _integer_labels_impl(
        logits,
        labels,
        _check_where(fname, where, logits, axes),
        class_weights,
        _check_sample_weights(fname, sample_weights, batch_shape),
        normalizer,
        eps_array,
        zeta_array,
        _all_valid(eps_valid, zeta_valid, norm_valid, cw_valid, cap_valid),
        cap_array,
        axis=axes,
        ignore_index=None if ignore_index is None else int(ignore_index),
        reduction=reduction,
        label_smoothing=eps,
        smoothing=smoothing,
        z_loss=zeta,
        return_aux=bool(return_aux),
        fused=bool(fused),
        logit_softcap=logit_softcap,
    )


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
    *,
    class_weights: ArrayLike | None = None,
    sample_weights: ArrayLike | None = None,
    reduction: str = "none",
    normalizer: ArrayLike | None = None,
    label_smoothing: ArrayLike = 0.0,
    z_loss: ArrayLike = 0.0,
    return_aux: bool = False,
    fused: bool = True,
    logit_softcap: ArrayLike | None = None,
):
    r"""Softmax cross-entropy with probability (soft) targets; a drop-in for optax's.

    .. math::

      L = \sum_c y_c \big(\operatorname{lse}(z) - z_c\big)
          + \zeta \operatorname{lse}(z)^2,
      \qquad
      \frac{\partial L}{\partial z} = p \big(\textstyle\sum_c y_c
          + 2 \zeta \operatorname{lse}(z)\big) - y,
      \qquad
      \frac{\partial L}{\partial y} = \operatorname{lse}(z) - z.

    The gradient is ``p - y`` when the targets sum to 1 and ``p sum(y) - y``
    when they do not; it comes from the same ``jax.custom_vjp`` as
    :func:`softmax_cross_entropy_with_integer_labels` (see there for dtypes,
    ``fused``, forward mode and array options).

    Args:
      logits: ``(..., C)`` floating-point logits (the class axis is ``axis``).
      labels: floating-point targets of the shape of ``logits``.
      axis: the class axis or axes (static): an int, a sequence of ints, or
        None for all axes.
      where: boolean mask, of the rank of ``logits`` (False classes are left
        out of the normaliser) or of the batch shape (a per-example mask, as
        in optax). Target mass on a masked class makes the loss ``+inf``
        (optax silently drops it). An example with no valid class gives 0 loss
        and 0 gradient and is not counted by ``"mean"``.
      class_weights: ``(C,)`` non-negative weights: target ``y_c`` becomes
        ``w_c y_c`` (PyTorch).
      sample_weights: per-example weights, broadcast to the batch shape.
      reduction: ``"none"`` (default), ``"sum"`` or ``"mean"``; the mean divides
        by the number of examples counted (or the sum of their
        ``sample_weights``), as PyTorch does for probability targets.
      normalizer: scalar > 0, with ``reduction="mean"``: divide the sum by this
        instead.
      label_smoothing: ``eps`` in [0, 1]: ``y <- (1 - eps) y + eps / C`` over the
        valid classes (PyTorch).
      z_loss: coefficient ``zeta`` of ``zeta * lse(z)^2``.
      return_aux: also return a :class:`CrossEntropyAux`.
      fused: False to use the plain formulation that JAX differentiates.
      logit_softcap: ``c > 0`` to soft-cap the logits first, ``z <- c tanh(z / c)``
        (see :func:`softmax_cross_entropy_with_integer_labels`). Default None.

    Returns:
      The loss (``(...)`` per example, or a scalar when reduced), in at least
      float32; with ``return_aux``, ``(loss, aux)``. Targets of 0 on masked or
      ``-inf`` logits cost nothing and get a zero gradient (in ``logits``,
      ``labels`` and ``class_weights``); NaN or ``+inf`` logits give NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> logits = jnp.array([2.0, 0.0, 0.0])
      >>> loss = jaxsce.softmax_cross_entropy(logits, jnp.array([0.5, 0.5, 0.0]))
      >>> print(f"{loss:.4f}")  # log(e^2 + 2) - 1
      1.2395
    """
    fname = "softmax_cross_entropy"
    logits = _check_logits(fname, logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.floating):
        raise TypeError(
            f"{fname}: `labels` must be floating-point probabilities, got dtype {labels.dtype};"
            " for class indices use softmax_cross_entropy_with_integer_labels."
        )
    if labels.shape != logits.shape:
        raise ValueError(
            f"{fname}: `labels` must have the shape of `logits`: logits {logits.shape},"
            f" labels {labels.shape}."
        )
    axes, batch_shape, num_classes = _class_axes(fname, logits, axis)
    _check_structure(fname, reduction, "torch")
    eps, eps_array, eps_valid = _numeric_option(fname, "label_smoothing", label_smoothing)
    zeta, zeta_array, zeta_valid = _numeric_option(fname, "z_loss", z_loss)
    normalizer, norm_valid = _check_normalizer(fname, normalizer, reduction)
    if class_weights is not None and len(axes) > 1:
        raise ValueError(f"{fname}: `class_weights` need a single class axis, got axis={axis}.")
    logit_softcap, cap_array, cap_valid = _check_softcap(fname, logit_softcap)
    class_weights, cw_valid = _check_class_weights(fname, class_weights, num_classes)
    return _probabilities_impl(
        logits,
        labels,
        _check_where(fname, where, logits, axes),
        class_weights,
        _check_sample_weights(fname, sample_weights, batch_shape),
        normalizer,
        eps_array,
        zeta_array,
        _all_valid(eps_valid, zeta_valid, norm_valid, cw_valid, cap_valid),
        cap_array,
        axis=axes,
        reduction=reduction,
        label_smoothing=eps,
        z_loss=zeta,
        return_aux=bool(return_aux),
        fused=bool(fused),
        logit_softcap=logit_softcap,
    )
