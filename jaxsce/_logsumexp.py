r"""The log-sum-exp core: one place that computes the softmax normaliser.

``logsumexp``, ``log_softmax`` and the cross-entropies with targets other than
one weighted label take their normaliser from :func:`max_and_rest`, which
writes it as

.. math::

  \log \sum_k e^{z_k} = m + \operatorname{log1p}(r), \qquad
  m = \max_k z_k, \qquad r = \sum_{k \ne \text{top}} e^{z_k - m},

where the sum ``r`` runs over every class but the largest. Writing the top
class's ``e^0 = 1`` as the exact ``1`` of ``log1p`` keeps the tiny ``r`` of a
confident prediction: ``log(1 + r)`` rounds ``1 + r`` to 1 when ``r`` is below
float32's epsilon and returns 0, ``log1p(r)`` returns ``r`` to full precision.
The same ``r`` gives ``1 - p_top = r / (1 + r)`` without cancellation.

Each term is :func:`scaled_exp`, ``e^{z - a} e^{a - m}`` with the exact shift
``a`` of :func:`exact_shift`: no rounding of ``z - m`` to correct. The shift
``m`` goes through ``lax.stop_gradient``; the largest entries (all of them
when several tie) are left out arithmetically and the tied 1s come back as
the exact integer ``count - 1``. A custom JVP gives ``1 + r`` the derivative
of the plain sum of exponentials, to every order. ``softmax`` needs no entry
left out (``u / sum(u)``), and the integer-label loss leaves out the label
(:mod:`jaxsce._cross_entropy`).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Axis = int | Sequence[int] | None


# -- moving the class axes to the end ------------------------------------------


def normalize_axes(axis: Axis, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Returns ``axis`` as a tuple of non-negative ints in the order given, checking each.

    ``None`` means every axis (as ``jax.nn`` and optax); an int-like (``np.int64``)
    or a sequence of them (tuple, list, array) names one axis or several. The
    order is kept: with several class axes a flat label indexes them row-major
    in that order, as in optax.
    """
    if axis is None:
        return tuple(range(ndim))
    axes: tuple[int, ...]
    try:
        axes = (operator.index(axis),)  # type: ignore[arg-type]
    except TypeError:
        try:
            axes = tuple(operator.index(a) for a in axis)  # type: ignore[union-attr]
        except TypeError:
            raise TypeError(
                f"`{name}` must be an int, a sequence of ints or None, got {name}={axis!r}."
            ) from None
    if not axes:
        raise ValueError(f"`{name}` must name at least one axis, got {name}={axis!r}.")
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"`{name}`={axis!r} is out of range for an array of rank {ndim}.")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"`{name}`={axis!r} repeats an axis.")
    return tuple(out)


def static_axis(fn):
    """``jax.jit`` with a static ``axis`` that may be any :data:`Axis` (a list too).

    The axis is normalised (:func:`normalize_axes`) before the jitted call, so
    ``[0, 1]``, ``(0, 1)`` and ``np.int64`` axes share one hashable static value.
    """
    jitted = jax.jit(fn, static_argnames=("axis",))

    @functools.wraps(fn)
    def wrapper(x, axis: Axis = -1, where=None):
        try:
            axes = normalize_axes(axis, np.ndim(x))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{fn.__name__}: {e}") from None
        return jitted(x, axis=axes, where=where)

    return wrapper


def classes_last(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Moves ``axes`` to the end and flattens them into one class axis."""
    k = len(axes)
    x = jnp.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
    batch = x.shape[: x.ndim - k]
    return x.reshape(batch + (math.prod(x.shape[x.ndim - k :]),))


def classes_restore(x: jax.Array, axes: tuple[int, ...], shape) -> jax.Array:
    """Inverse of :func:`classes_last` for an array of the original ``shape``."""
    k = len(axes)
    moved = [d for i, d in enumerate(shape) if i not in axes] + [shape[a] for a in axes]
    x = x.reshape(moved)
    return jnp.moveaxis(x, tuple(range(x.ndim - k, x.ndim)), axes)


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype jaxsce computes in: at least float32 (16-bit floats are upcast)."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else dtype


# -- the core ------------------------------------------------------------------


class MaxAndRest(NamedTuple):
    """The normaliser of each row, in the form ``m + log1p(rest)``.

    Attributes:
      shift: ``(...,)`` the largest logit ``m``; 0 in rows with no valid class
        (all masked or all ``-inf``), NaN in rows holding NaN or ``+inf``.
      rest: ``(...,)`` the sum of ``exp(z_k - m)`` over every class but one of
        the largest, so that the row's sum of exponentials is ``1 + rest``.
      empty: ``(...,)`` True in rows with no valid class.
    """

    shift: jax.Array
    rest: jax.Array
    empty: jax.Array

    @property
    def logsumexp(self) -> jax.Array:
        return jnp.where(self.empty, -jnp.inf, self.shift + jnp.log1p(self.rest))


def mask_logits(z: jax.Array, where: jax.Array | None) -> jax.Array:
    """Sets masked entries to ``-inf`` (their gradient through it is 0)."""
    return z if where is None else jnp.where(where, z, -jnp.inf)


def _underflow_distance(dtype) -> float:
    """A distance below the shift past which ``exp`` is exactly 0 in ``dtype``."""
    return 128.0 if jnp.finfo(dtype).bits <= 32 else 1024.0


def exp_shifted(z: jax.Array, shift: jax.Array) -> jax.Array:
    """``exp(z - shift)`` with the rounding error of the subtraction put back.

    ``z - shift`` rounds to ``d`` with an absolute error up to half an ulp of
    ``d``; through ``exp`` that becomes a relative error of ``|d| eps / 2``
    (about 25 ulp at ``d = -50``). The exact error ``r = (z - shift) - d``
    comes from Dekker's Fast2Sum, which needs its larger operand first: with
    ``z <= shift``, ``min(z, -shift)`` is the one of larger magnitude. Then
    ``exp(d) (1 + r)`` is exact to first order. ``r`` has derivative 0
    (``stop_gradient`` says so), so the derivative is that of ``exp(z - shift)``.

    Where ``z`` is ``-inf`` (or ``d`` overflows) ``exp(d)`` is 0; there the
    Fast2Sum runs on ``max(d, -L)`` so that no ``inf - inf`` turns into NaN,
    gives ``r = -inf``, which is clamped to ``-1`` and multiplied by 0. Nothing
    is clamped relative to ``shift``, so this holds for every finite shift
    (``shift - L`` would round back to ``shift`` past 2^31).
    """
    d = z - shift
    big, small = jnp.minimum(z, -shift), jnp.maximum(z, -shift)  # |big| >= |small|
    r = small - (jnp.maximum(d, -_underflow_distance(d.dtype)) - big)
    r = jax.lax.stop_gradient(jnp.maximum(r, -1.0))
    e = jnp.exp(d)
    return e + e * r


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _rest_of(z: jax.Array, shift: jax.Array, empty: jax.Array, width: int) -> jax.Array:
    """``sum exp(z_k - m)`` over every entry but one largest, exactly.

    Each largest entry is left out, and all but one of them come back as the
    exact count of ties. Masked entries are ``-inf``, with ``e = 0``. Each
    term is scaled, not the sum: the products' roundings average out over
    the sum, where one product of the sum would add its half ulp to ``rest``.

    Summed by columns (``width``, static, from :func:`by_columns`; 0 for
    whole rows), the largest entries are left out by a select. XLA's CPU
    reductions over whole rows run a select several times slower, so there
    they are left out by the factor ``1 - top = ceil(min(m - z, 1))`` (0 on
    it, 1 below it), and the ties are counted as ``C + sum(floor(max(z - s,
    -1/2)))`` (each term -1 below the top, 0 on it) with a copy ``s`` of the
    shift that differs from it in empty rows (where nothing counts) and
    other constants: XLA writes out as an ``(..., C)`` array whatever two
    reductions share, instead of fusing it into each. For the same reason
    16-bit logits are upcast twice, the second time from a barrier's copy
    of ``z`` (a no-op that XLA does not merge with ``z``).
    """
    a, scale = row_shift(shift)
    if width:

        def below_top(z, _, s, a, scale):
            return jnp.where(z < s, jnp.exp(z - a) * scale, 0.0)

        others = row_sum_of(below_top, width, z, shift, a, scale)
        top = jnp.where(empty, jnp.nan, shift)  # NaN: no entry is a top one
        ties = row_sum_of(lambda z, _, s: jnp.where(z == s, 1.0, 0.0), width, z, top)
        return computed_once(others + jnp.maximum(ties - 1.0, 0.0), a)

    def other(z, _, shift, a, scale):
        return jnp.exp(z - a) * scale * jnp.ceil(jnp.minimum(shift - z, 1.0))

    def below(z, _, s):
        return jnp.floor(jnp.maximum(z - s, -0.5))

    z, z_ties = z.astype(shift.dtype), jax.lax.optimization_barrier(z).astype(shift.dtype)
    others = row_sum_of(other, 0, z, shift, a, scale)
    ties = (z.shape[-1] - 1) + row_sum_of(below, 0, z_ties, jnp.where(empty, 1.0, shift))
    return others + jnp.maximum(ties, 0.0)


@_rest_of.defjvp
def _rest_of_jvp(width, primals, tangents):
    """``d(1 + rest) = sum_k e^{z_k - m} (dz_k - dm)``: ``1 + rest`` is the plain sum.

    (The left-out largest entries have the derivative of ``e^{z - m}`` too.)
    """
    z, shift, empty = primals
    dz, dshift, _ = tangents
    rest = _rest_of(z, shift, empty, width)
    return rest, _exp_dot(z, shift, dz) - (1 + rest) * dshift


@jax.checkpoint
def _exp_dot(z: jax.Array, shift: jax.Array, dz: jax.Array) -> jax.Array:
    """``sum_k e^{z_k - shift} dz_k``, the tangent of ``1 + rest``, recomputed where it is used.

    Reverse mode transposes this into ``dz_k = e^{z_k - shift} g`` for the
    row's cotangent ``g``. Without ``jax.checkpoint`` JAX would compute the
    exponentials in the forward pass and keep them for the backward pass, an
    array of the logits' size. With it, the backward pass keeps ``z`` and
    ``shift`` and computes the exponentials in the kernel that writes ``dz``.
    The barrier keeps XLA from merging that exponential with the forward
    pass's (the same expression), which would write it out to share it.
    """
    z, shift = jax.lax.optimization_barrier((z, shift))
    cd = shift.dtype
    return jnp.sum(scaled_exp(z.astype(cd), shift) * dz.astype(cd), axis=-1)


COLUMNS = 32  # classes per row up to which softmax's sum goes column by column ...
LABEL_COLUMNS = 100  # ... the integer-label loss's (measured: much slower past 122) ...
REST_COLUMNS = 128  # ... the log-sum-exp's, whose terms are simpler ...
COLUMN_ROWS = 1024  # ... in a batch of at least this many rows
HALF_COLUMNS = 15  # 16-bit logits: XLA copies their upcast into at most 15 places
MIN_WIDTH = 16  # the narrowest block of columns a longer row is cut into


def by_columns(z: jax.Array, classes: int = COLUMNS, blocks: bool = True) -> int:
    """The width of the column blocks in which the rows of ``z`` are summed (static).

    0: whole rows, as reductions. A row of at most ``classes`` classes is
    summed as a balanced tree of its columns (width ``C``): XLA fuses the
    columns' operations and the rest of the row's work into one loop over
    the rows, where its reductions over short rows cost several times more
    per entry (2x to 3x on ``logsumexp`` of 8192 x 10 logits). With
    ``blocks``, a longer row of at most ``BLOCK`` classes is cut into blocks
    of the widest width between ``MIN_WIDTH`` and ``classes`` that divides
    ``C`` (125 for 1000 classes), each summed by columns as a row of its own,
    and the blocks' sums are added. The limits are measured: the loop's
    unrolled code grows with the width (and the compile time with it), and
    past them the reductions win. Below ``COLUMN_ROWS`` rows (of blocks) the
    loop's handoff to a second thread costs more than it saves, and under
    ``vmap`` the rows are not seen here. 16-bit logits go by columns up to
    ``HALF_COLUMNS`` classes and not by blocks: XLA's CPU backend slices them
    out of their float32 upcast, which its fusion copies into the loop for up
    to 15 slices (its limit on duplicated code) and past that writes out, a
    float32 copy of the logits.
    """
    num_classes = z.shape[-1]
    rows = z.size // max(num_classes, 1)
    half = compute_dtype(z.dtype) != z.dtype
    if half:
        classes = min(classes, HALF_COLUMNS)
    width = 0
    if num_classes <= classes:
        width = num_classes
    elif blocks and not half and num_classes <= BLOCK:
        width = max((w for w in range(MIN_WIDTH, classes + 1) if num_classes % w == 0), default=0)
    return width if width and rows * (num_classes // width) >= COLUMN_ROWS else 0


def computed_once(x: jax.Array, finite: jax.Array) -> jax.Array:
    """``x`` itself, computed in one kernel of its own and read from there.

    For a sum of columns (:func:`row_sum_of`) read by more than one kernel,
    such as a forward value and its derivative, or a loss and its
    log-sum-exp. XLA copies cheap operations into each kernel that reads
    them, but not an ``exp``: the copied adds would leave every column's
    exponentials in a kernel of their own (tens of kernels, several times
    slower). Two steps, each an identity:

    - ``x / (0 finite + 1)``, a division by an exact 1 (``finite`` is any
      finite ``(...,)`` array) that XLA cannot prove (``0 inf`` is NaN), so
      that it stays; XLA does not copy a division either;
    - ``where(d == d, d, nan)``: XLA's CPU fusion of a reduction that reads
      ``x`` takes in adds and divisions but not a select, and would
      otherwise take the whole sum and leave each column's terms outside.
    """
    d = x / (finite * 0 + 1)
    return jnp.where(d == d, d, jnp.nan)


def _pairwise(op, xs: list) -> jax.Array:
    """``op`` folded over ``xs`` as a balanced tree (independent operations)."""
    while len(xs) > 1:
        xs = [op(xs[i], xs[i + 1]) if i + 1 < len(xs) else xs[i] for i in range(0, len(xs), 2)]
    return xs[0]


def row_sum_of(f, width: int, z: jax.Array, *rows: jax.Array) -> jax.Array:
    """``sum_k f(z_k, k, *rows)`` over the last axis; ``rows`` are ``(...,)`` per-row values.

    ``k`` is the class index. ``width`` (static) is :func:`by_columns`'s: 0
    applies ``f`` to the whole array (``k`` an int32 iota), with the per-row
    values broadcast, and sums. ``C`` applies it to each column ``z[..., k]``
    (``k`` a Python int) and adds the results pairwise. A smaller width does
    that on the ``C / width`` blocks of each row as rows of their own (``k``
    the class index of the block's column), adds the blocks' sums pairwise,
    and computes the blocks' sums once (:func:`computed_once`): else XLA
    copies their adds into the second sum and slices every column of every
    block out of the logits.
    """
    if not width:
        k = jax.lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1)
        return jnp.sum(f(z, k, *(r[..., None] for r in rows)), axis=-1)
    cd = compute_dtype(z.dtype)
    if width == z.shape[-1]:
        return _pairwise(jnp.add, [f(z[..., k].astype(cd), k, *rows) for k in range(width)])
    batch, blocks = z.shape[:-1], z.shape[-1] // width

    def per_block(r):  # (...,) -> (rows * blocks,), each row's value for each of its blocks
        return jnp.broadcast_to(r[..., None], batch + (blocks,)).reshape(-1)

    z = z.reshape(-1, width)
    first = jnp.arange(0, blocks * width, width, dtype=jnp.int32)  # each block's first class
    first = jnp.broadcast_to(first, batch + (blocks,)).reshape(-1)
    rows = tuple(per_block(r) for r in rows)
    sums = _pairwise(jnp.add, [f(z[:, k].astype(cd), first + k, *rows) for k in range(width)])
    sums = computed_once(sums, jnp.isnan(z[:, 0]).astype(cd)).reshape(batch + (blocks,))
    return _pairwise(jnp.add, [sums[..., b] for b in range(blocks)])


def _block_reduce(x: jax.Array, op, init: float, block: int) -> jax.Array:
    """``op`` over each run of ``block`` classes: ``(..., C) -> (..., ceil(C / block))``."""
    window = (1,) * (x.ndim - 1) + (block,)
    padding = ((0, 0),) * (x.ndim - 1) + ((0, -x.shape[-1] % block),)
    init_value = np.asarray(init, x.dtype)[()]  # a constant, so JAX knows the monoid
    return jax.lax.reduce_window(x, init_value, op, window, window, padding)


BLOCK = 1024


def max_and_rest(z: jax.Array, block: int = BLOCK) -> MaxAndRest:
    """Splits the log-sum-exp of ``z`` over its last axis as ``m + log1p(rest)``.

    A row of at most ``block`` classes takes one pass for the largest logit
    and one for :func:`_rest_of` (its two sums fuse into one loop; rows of
    at most ``REST_COLUMNS`` classes go by columns, :func:`by_columns`). A longer
    row is cut into blocks of ``block`` classes: every block but the one
    holding the largest class is summed plainly, and the exact exclusion,
    which costs a few more operations per entry, runs on that one block only.

    Args:
      z: ``(..., C)`` logits with masked entries already set to ``-inf``. 16-bit
        logits stay 16-bit: the max is exact in their dtype, and each kernel
        upcasts what it reads (no float32 copy of the whole array).
      block: classes per block (static).

    Returns:
      A :class:`MaxAndRest` with arrays of shape ``(...,)``.
    """
    num_classes, cd = z.shape[-1], compute_dtype(z.dtype)
    if num_classes <= block:
        m = jax.lax.stop_gradient(jnp.max(z, axis=-1)).astype(cd)
    else:
        block_max = _block_reduce(jax.lax.stop_gradient(z), jax.lax.max, -jnp.inf, block)
        block_max = block_max.astype(cd)
        m = jnp.max(block_max, axis=-1)
    empty = m == -jnp.inf
    # -inf rows shift by 0 (every exponential is then 0); +inf rows by NaN, so
    # that NaN comes out rather than a number that hides the overflow.
    shift = jnp.where(jnp.isfinite(m), m, jnp.where(empty, 0.0, jnp.nan))
    if num_classes <= block:
        rest = _rest_of(z, shift, empty, by_columns(z, REST_COLUMNS))
        return MaxAndRest(shift, rest, empty)
    return MaxAndRest(shift, _blocked_rest(z, shift, block_max, empty, block), empty)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _blocked_rest(z, shift, block_max, empty, block):
    """:func:`_rest_of` over a row cut into blocks: only the top block excludes."""
    num_classes = z.shape[-1]
    k = jnp.argmax(block_max, axis=-1)  # the block holding the largest class
    block_sum = _block_reduce(scaled_exp(z.astype(shift.dtype), shift), jax.lax.add, 0.0, block)
    block_ids = jax.lax.broadcasted_iota(k.dtype, block_sum.shape, block_sum.ndim - 1)
    others = jnp.sum(jnp.where(block_ids == k[..., None], 0.0, block_sum), axis=-1)
    index = k[..., None] * block + jax.lax.broadcasted_iota(k.dtype, k.shape + (block,), k.ndim)
    in_row = index < num_classes
    inside = jnp.minimum(index, num_classes - 1)
    top_block = jnp.take_along_axis(z, inside, axis=-1, mode="promise_in_bounds")
    return others + _rest_of(jnp.where(in_row, top_block, -jnp.inf), shift, empty, 0)


@_blocked_rest.defjvp
def _blocked_rest_jvp(block, primals, tangents):
    """``d(1 + rest) = sum_k e^{z_k - m} (dz_k - dm)``: ``1 + rest`` is the plain sum.

    Differentiating the blocked computation itself would transpose the gather
    of the top block into a scatter and the block sums into windowed sums,
    which XLA's CPU backend runs hundreds of times slower than this.
    """
    z, shift, block_max, empty = primals
    dz, dshift, _, _ = tangents
    rest = _blocked_rest(z, shift, block_max, empty, block)
    return rest, _exp_dot(z, shift, dz) - (1 + rest) * dshift


def exact_shift(m: jax.Array) -> jax.Array:
    r"""A per-row shift ``a`` for which ``z - a`` is exact on every logit that counts.

    ``exp(z - m)`` pays for the rounding of ``z - m``: a relative error up to
    ``|z - m| eps / 2``, about 25 ulp at a margin of 50 (:func:`exp_shifted`
    adds a Fast2Sum correction for it, at the price of several operations per
    logit). A shift that makes the subtraction exact needs no correction.
    In a row whose largest logit is ``m``, the logits that count lie in
    ``[m - 70, m]`` (the documented accuracy range; further down the terms
    are below ``e^-70`` of the largest one). This ``a`` subtracts exactly
    from each of them, and keeps ``-87 < z - a <= m - a <= 80``, so that
    ``exp(z - a)`` and the row's scale ``exp(a - m)`` are normal floats and
    a sum of up to 1024 terms ``exp(z - a)`` cannot overflow (``1024 e^80 <
    e^87``; :func:`scaled_exp_total` scales the sum, not each term):

    ===================== ========= ==========================================
    largest logit ``m``   ``a``     why ``z - a`` is exact
    ===================== ========= ==========================================
    ``[-17, 80]``         ``0``     nothing is subtracted
    ``(80, 96]``          ``16``    ``z >= 8``: the difference fits ``z``'s grid
    ``(96, 112]``         ``32``    ``z >= 16``, likewise
    ``(112, 144]``        ``64``    ``z >= 32``, likewise
    ``> 144``, ``< -70``  ``m``     Sterbenz: ``z`` within a factor 2 of ``m``
    ``[-70, -70/3]``      ``2m``    Sterbenz: ``z`` in ``[4m, m]``
    ``(-70/3, -17)``      ``-16``   ``z <= -8``: the difference fits ``z``'s grid
    ===================== ========= ==========================================

    (Subtracting a power of two ``P`` from ``z`` of the same sign is exact
    when ``|z| >= P / 2``, and when ``P / 3 < 2^j <= |z|``: the result is a
    multiple of ``ulp(z)`` below ``2^(j+1)``.) A non-finite ``m`` gives 0.
    """
    a = jnp.where(m <= 96.0, 16.0, jnp.where(m <= 112.0, 32.0, jnp.where(m <= 144.0, 64.0, m)))
    a = jnp.where(m <= 80.0, 0.0, a)
    low = jnp.where(m < -70.0, m, jnp.where(m <= -70.0 / 3.0, 2.0 * m, -16.0))
    a = jnp.where(m < -17.0, low, a)
    return jnp.where(jnp.isfinite(m), a, 0.0).astype(m.dtype)


def scaled_exp(z: jax.Array, shift: jax.Array) -> jax.Array:
    """``e^{z - shift}`` as ``e^{z - a} e^{a - shift}`` with ``a`` from :func:`exact_shift`.

    ``z - a`` is exact, so each entry carries the rounding of one ``exp`` and
    one product whatever ``z - shift`` is (``exp(z - shift)`` loses up to
    ``|z - shift| eps / 2``). ``shift`` is ``(...,)``, the row's largest
    logit; a ``-inf`` one (an empty row) counts as 0, so that ``-inf``
    entries give 0, not NaN; NaN propagates.
    """
    a, scale = row_shift(shift)
    return jnp.exp(z - a[..., None]) * scale[..., None]


def row_shift(shift: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(a, e^{a - shift})``: a row's exact shift and its scale.

    ``e^{z - shift} = e^{z - a} e^{a - shift}`` with ``z - a`` exact. A
    ``-inf`` shift (an empty row) counts as 0, so that ``-inf`` entries give 0,
    not NaN; NaN propagates. The scale passes a barrier: XLA rewrites
    ``exp(x) * exp(y)`` as ``exp(x + y)``, whose rounded sum is the plain
    shift's error again (15 ulp at a margin of 40).
    """
    shift = jnp.where(shift == -jnp.inf, 0.0, shift)
    a = exact_shift(shift)
    return a, jax.lax.optimization_barrier(jnp.exp(a - shift))


def scaled_exp_total(z: jax.Array, shift: jax.Array) -> jax.Array:
    """``sum_k e^{z_k - shift}`` over the last axis, with the exact shift.

    A row of at most :data:`BLOCK` classes sums ``e^{z - a}`` and scales the
    sum by ``e^{a - shift}`` once: one product per entry fewer than summing
    :func:`scaled_exp`, which XLA's CPU reductions feel at small class
    counts. :func:`exact_shift`'s ``e^{z - a} <= e^80`` keeps a sum of 1024
    terms finite. Longer rows scale each term. A ``-inf`` shift counts as 0.
    """
    if z.shape[-1] > BLOCK:
        return jnp.sum(scaled_exp(z, shift), axis=-1)
    a, scale = row_shift(shift)
    width = by_columns(z, blocks=False)  # (by blocks, measured slower here)
    return row_sum_of(lambda z, _, a: jnp.exp(z.astype(a.dtype) - a), width, z, a) * scale


def _prepare(x_in: ArrayLike, axis: Axis, where: ArrayLike | None, fname: str):
    x = jnp.asarray(x_in)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fname}: `x` must be a floating-point array, got dtype {x.dtype}.")
    axes = normalize_axes(axis, x.ndim)
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            raise TypeError(f"{fname}: `where` must be a boolean array, got dtype {where.dtype}.")
        try:
            where = jnp.broadcast_to(where, x.shape)
        except ValueError:
            raise ValueError(
                f"{fname}: `where` of shape {where.shape} does not broadcast to `x` of"
                f" shape {x.shape}."
            ) from None
        where = classes_last(where, axes)
    return x, axes, mask_logits(classes_last(x, axes), where)  # in x's dtype


@static_axis
def logsumexp(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> jax.Array:
    r"""Log-sum-exp over the class axis.

    .. math::

      \operatorname{lse}(z) = \log \sum_k e^{z_k} = m + \operatorname{log1p}
        \Big(\sum_{k \ne \text{top}} e^{z_k - m}\Big), \quad m = \max_k z_k

    Args:
      x: ``(..., C, ...)`` floating-point array.
      axis: the class axis or axes (static).
      where: optional boolean mask broadcastable to ``x``; False entries are
        left out of the sum.

    Returns:
      ``x`` with ``axis`` reduced, in ``x``'s dtype (16-bit inputs are computed
      in float32). A row with no valid entry (all masked or all ``-inf``) gives
      ``-inf`` and a zero gradient; NaN or ``+inf`` in a row gives NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> float(jaxsce.logsumexp(jnp.array([0.0, 0.0])))  # log 2
      0.693...
    """
    arr, axes, z = _prepare(x, axis, where, "logsumexp")
    if z.shape[-1] == 0:  # no classes: the empty sum, as jax.nn.logsumexp
        return jnp.full(z.shape[:-1], -jnp.inf, arr.dtype)
    return max_and_rest(z).logsumexp.astype(arr.dtype)


@static_axis
def log_softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> jax.Array:
    r"""Log-softmax: ``z_i - lse(z)``, accurate for the largest entry too.

    .. math::

      \log p_i = (z_i - m) - \operatorname{log1p}\Big(\sum_{k \ne \text{top}}
        e^{z_k - m}\Big)

    Args:
      x: ``(..., C, ...)`` floating-point array.
      axis: the class axis or axes (static).
      where: optional boolean mask broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and dtype. Masked entries are ``-inf``; a row
      with no valid entry is all ``-inf`` (no NaN, gradients included).

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> jaxsce.log_softmax(jnp.array([0.0, 0.0]))
      Array([-0.693..., -0.693...], dtype=float32)
    """
    arr, axes, z = _prepare(x, axis, where, "log_softmax")
    if z.shape[-1] == 0:
        return jnp.zeros(arr.shape, arr.dtype)  # nothing to normalise
    s = max_and_rest(z)
    # Separate copies (the barrier's no-op outputs) of z and the shift for the
    # output's kernel: XLA would otherwise write out, to share them with the
    # sum, a float32 copy of 16-bit logits or the shift broadcast to (..., C).
    z, shift = jax.lax.optimization_barrier((z, s.shift))
    out = (z.astype(shift.dtype) - shift[..., None]) - jnp.log1p(s.rest)[..., None]
    return classes_restore(out.astype(arr.dtype), axes, arr.shape)


@static_axis
def softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> jax.Array:
    r"""Softmax: ``p_i = e^{z_i} / sum_k e^{z_k}``, shifted by the largest logit.

    .. math::

      p_i = \frac{e^{z_i - m}}{1 + \sum_{k \ne \text{top}} e^{z_k - m}}

    Args:
      x: ``(..., C, ...)`` floating-point array.
      axis: the class axis or axes (static).
      where: optional boolean mask broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and dtype. Masked entries are 0; a row with no
      valid entry is all 0 (no NaN, gradients included).

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> jaxsce.softmax(jnp.array([0.0, 0.0]))
      Array([0.5, 0.5], dtype=float32)
    """
    arr, axes, z = _prepare(x, axis, where, "softmax")
    if z.shape[-1] == 0:
        return jnp.zeros(arr.shape, arr.dtype)  # nothing to normalise
    return classes_restore(_softmax(z).astype(arr.dtype), axes, arr.shape)


@jax.custom_jvp
def _softmax(z: jax.Array) -> jax.Array:
    """``p = e^{z - m} / sum_k e^{z_k - m}`` as ``e^{z - a} (e^{a - m} / total)``.

    ``a`` is the exact shift (:func:`exact_shift`) and ``total`` comes from
    :func:`scaled_exp_total`. The row's factor ``e^{a - m} / total`` is one
    division per row instead of one per entry, with as many roundings per
    entry as ``u / total`` (``exp``, the factor's two, the product). No
    cancellation to avoid. ``z`` may be 16-bit: the max is exact in its
    dtype, and the result is in the compute dtype.
    """
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1)).astype(compute_dtype(z.dtype))
    total = scaled_exp_total(z, m)
    # The exponentials again, in the kernel that writes p: the barrier keeps XLA
    # from sharing them with the sum, which would write them out as an array.
    z_b, m_b = jax.lax.optimization_barrier((z, m))
    a, scale = row_shift(m_b)
    factor = scale / jnp.where(m == -jnp.inf, 1.0, total)
    return jnp.exp(z_b.astype(m.dtype) - a[..., None]) * factor[..., None]  # 16-bit upcast here


@_softmax.defjvp
def _softmax_jvp(primals, tangents):
    """``dp = p (dz - sum(p dz))``, the Jacobian ``diag(p) - p p^T`` applied to ``dz``."""
    (z,), (dz,) = primals, tangents
    p = _softmax(z)
    pdz = p * dz.astype(p.dtype)
    return p, pdz - p * jnp.sum(pdz, axis=-1, keepdims=True)
