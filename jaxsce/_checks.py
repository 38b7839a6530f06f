"""Checks of labels and numeric options, for concrete and traced values alike.

Labels: a raised error for labels outside ``[0, C)``, which the losses turn
into NaN, and the label arithmetic itself, done without wrapping in a narrow
integer dtype (uint8 labels with 256 classes, int16 with 32768).

Options: a concrete value is checked at once and raises ``ValueError``; a
traced one (an argument of a jitted function) is checked by
``jax.experimental.checkify`` (``checkify.debug_check``: a no-op unless the
caller checkifies) and, whatever the caller does, an invalid value turns the
loss into NaN rather than into a plausible number.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

# -- labels ----------------------------------------------------------------------


def _fits(value: int, dtype) -> bool:
    info = jnp.iinfo(dtype)
    return int(info.min) <= value <= int(info.max)


def labels_in_range(labels: jax.Array, num_classes: int) -> jax.Array:
    """``0 <= labels < num_classes``, compared in a way that cannot wrap."""
    ok = jnp.ones(labels.shape, bool)
    if jnp.iinfo(labels.dtype).min < 0:
        ok = labels >= 0
    if _fits(num_classes, labels.dtype):  # else every label is below C
        ok = ok & (labels < num_classes)
    return ok


def labels_ignored(labels: jax.Array, ignore_index: int | None) -> jax.Array:
    """``labels == ignore_index``; never true for a value the dtype cannot hold.

    A negative ``ignore_index`` never matches an unsigned label (uint8 labels
    and ``-100`` do not ignore class 156).
    """
    if ignore_index is None or not _fits(ignore_index, labels.dtype):
        return jnp.zeros(labels.shape, bool)
    return labels == jnp.asarray(ignore_index, labels.dtype)


def index_dtype(num_classes: int):
    """An integer dtype wide enough to index ``num_classes`` classes."""
    return jnp.int32 if num_classes < 2**31 else jnp.int64


def class_indices(labels: jax.Array, num_classes: int, keep: jax.Array) -> jax.Array:
    """Labels as indices of :func:`index_dtype`: 0 where not ``keep``, -1 where out of range.

    The range is checked in the labels' own dtype (no wrap) before the cast,
    so a label that does not fit the index dtype is out of range, never another
    class.
    """
    bad = keep & ~labels_in_range(labels, num_classes)
    idx = labels.astype(index_dtype(num_classes))
    return jnp.where(keep, jnp.where(bad, -1, idx), 0)


def check_labels(labels: ArrayLike, num_classes: int, *, ignore_index: int | None = None) -> None:
    """Checks that every label is a class index in ``[0, num_classes)``.

    The losses never fail on a bad label (inside ``jax.jit`` they cannot): they
    return NaN for that example. Call this to get an error instead. Eagerly it
    raises at once; inside ``jax.jit``, wrap the jitted function with
    ``jax.experimental.checkify.checkify`` and call ``.throw()`` on the error it
    returns. The comparison cannot wrap: uint8 labels with ``num_classes=256``
    are all valid, and a negative ``ignore_index`` never matches an unsigned
    label.

    Args:
      labels: integer labels, any shape.
      num_classes: the number of classes ``C``.
      ignore_index: a label value that is allowed (ignored by the loss).

    Raises:
      jax.errors.JaxRuntimeError: naming the first bad label's value and its
        index, for example ``label 7 at index [1 2] is outside [0, 5)``. The
        index is into the array this function was given: under ``jax.vmap``
        that is one mapped slice, so call it on the whole batch (outside the
        ``vmap``) to get the index into the batch.

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> jaxsce.check_labels(jnp.array([0, 4, 2]), 5)  # fine: returns None
    """
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"check_labels: `labels` must be integers, got dtype {labels.dtype}.")
    ok = labels_in_range(labels, num_classes) | labels_ignored(labels, ignore_index)
    if labels.size == 0:
        return
    flat = jnp.argmin(ok.ravel())  # the first False
    index = jnp.stack(jnp.unravel_index(flat, labels.shape)) if labels.ndim else flat
    checkify.check(
        jnp.all(ok),
        f"label {{value}} at index {{index}} is outside [0, {num_classes})",
        value=labels.ravel()[flat],
        index=index,
    )


# -- numeric options -------------------------------------------------------------


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_array_option(
    fname: str,
    name: str,
    value: jax.Array,
    ok: Callable,
    expected: str,
) -> jax.Array | None:
    """Checks ``ok(value)`` (elementwise) for an array option.

    A concrete value is checked on the host and raises ``ValueError`` naming
    ``fname``, ``name``, what is ``expected`` and the value. A traced value
    gets a ``checkify.debug_check`` with the same message, and the function
    returns the scalar predicate, for the caller to turn the loss into NaN
    where it is False. Returns None for a concrete value that passed.
    """
    message = f"{fname}: `{name}` must be {expected}"
    if not is_traced(value):
        host = np.asarray(value)
        if not np.all(ok(host)):
            raise ValueError(f"{message}, got {name}={host!r}.")
        return None
    valid = jnp.all(ok(value))
    checkify.debug_check(valid, message + ", got {value}.", value=value)
    return valid
