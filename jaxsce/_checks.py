"""A raised error for labels outside ``[0, C)``, which the losses turn into NaN."""

from __future__ import annotations

import jax.numpy as jnp
from jax.experimental import checkify
from jax.typing import ArrayLike


def check_labels(labels: ArrayLike, num_classes: int, *, ignore_index: int | None = None) -> None:
    """Checks that every label is a class index in ``[0, num_classes)``.

    The losses never fail on a bad label (inside ``jax.jit`` they cannot): they
    return NaN for that example. Call this to get an error instead. Eagerly it
    raises at once; inside ``jax.jit``, wrap the jitted function with
    ``jax.experimental.checkify.checkify`` and call ``.throw()`` on the error it
    returns.

    Args:
      labels: integer labels, any shape.
      num_classes: the number of classes ``C``.
      ignore_index: a label value that is allowed (ignored by the loss).

    Raises:
      jax.errors.JaxRuntimeError: naming the first bad label's value and its
        index, for example ``label 7 at index [1 2] is outside [0, 5)``.

    Examples:
      >>> import jax.numpy as jnp, jaxsce
      >>> jaxsce.check_labels(jnp.array([0, 4, 2]), 5)  # fine: returns None
    """
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"check_labels: `labels` must be integers, got dtype {labels.dtype}.")
    ok = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        ok = ok | (labels == ignore_index)
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
