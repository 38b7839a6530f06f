r"""Every use of jaxsce's internal functions, in one place, so that a rename is one edit here.

The derivations prove the algorithms these functions run; :mod:`symbolic._check` compares
each proven formula with the function at random points. An option or method the library
does not have yet (``logit_softcap``, ``method="precompute"``) is reported as absent.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp

import jaxsce
from jaxsce._cross_entropy import Targets, _xent
from jaxsce._linear import _combine_shards, _merge_max_and_rest
from jaxsce._logsumexp import max_and_rest

AXIS = "shards"


def normaliser(z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(m, r, m + log1p(r))`` of ``jaxsce._logsumexp.max_and_rest``."""
    s = max_and_rest(z)
    return s.shift, s.rest, s.logsumexp


def fused_gradient(z: jax.Array, y: jax.Array, zeta: float) -> jax.Array:
    r"""Gradient of :math:`\sum_b \text{ce}_b + \zeta\,\text{lse}_b^2` by the library's
    custom rule (``_xent_bwd`` through ``jax.vjp`` of ``_xent``)."""
    (ce, lse, _), vjp = jax.vjp(lambda v: _xent(v, None, Targets(dense=y)), z)
    correct_cotangent = jnp.zeros(ce.shape, jax.dtypes.float0)
    return vjp((jnp.ones_like(ce), 2 * zeta * lse, correct_cotangent))[0]


def merge(m, r, m_c, r_c) -> tuple[jax.Array, jax.Array]:
    """``jaxsce._linear._merge_max_and_rest``."""
    return _merge_max_and_rest(m, r, m_c, r_c)


def combine_shards(m_l, rest_l, zy_l, shard_logits, owned):
    r"""``jaxsce._linear._combine_shards`` over a leading shard axis (``jax.vmap``'s axis).

    Returns the global ``(m, rest, gap)``, ``gap`` (:math:`\sum_k (m - z_k)`) None in the
    version that combines the sum of the logits instead.
    """
    v_local = shard_logits.shape[-1]
    if "gap_l" in inspect.signature(_combine_shards).parameters:
        finite = jnp.where(m_l == -jnp.inf, 0.0, m_l)
        gap_l = jnp.sum(finite[..., None] - shard_logits, axis=-1)
        m, rest, _, gap = jax.vmap(
            lambda *a: _combine_shards(*a[:4], v_local, a[4], AXIS, True), axis_name=AXIS
        )(m_l, rest_l, zy_l, gap_l, owned)
        return m, rest, gap
    m, rest, _, _ = jax.vmap(lambda *a: _combine_shards(*a, AXIS, True), axis_name=AXIS)(
        m_l, rest_l, zy_l, shard_logits.sum(-1), owned
    )
    return m, rest, None


def vocab_parallel_loss(shard_logits: jax.Array, labels: jax.Array, eps: float) -> jax.Array:
    """``jaxsce.vocab_parallel_softmax_cross_entropy`` on ``(S, N, V / S)`` shard logits."""
    return jax.vmap(
        lambda z: jaxsce.vocab_parallel_softmax_cross_entropy(
            z, labels, axis_name=AXIS, label_smoothing=eps
        ),
        axis_name=AXIS,
    )(shard_logits)


def has_option(function, name: str) -> bool:
    """Whether a public loss takes the keyword ``name`` (an option still being added)."""
    return name in inspect.signature(function).parameters


def softcap_gradient(z_raw: jax.Array, labels: jax.Array, cap: float):
    """Gradient in the raw logits of the integer-label loss with ``logit_softcap=cap``,
    or None while the library has no such option."""
    loss = jaxsce.softmax_cross_entropy_with_integer_labels
    if not has_option(loss, "logit_softcap"):
        return None
    return jax.grad(lambda v: loss(v, labels, logit_softcap=cap).sum())(z_raw)


def label_loss(z: jax.Array, labels: jax.Array) -> jax.Array:
    """The library's integer-label loss, summed over the batch."""
    return jaxsce.softmax_cross_entropy_with_integer_labels(z, labels).sum()


def label_gradient(z: jax.Array, labels: jax.Array) -> jax.Array:
    """The library's fused gradient of the integer-label loss, summed over the batch."""
    return jax.grad(label_loss)(z, labels)


def linear_vjp(hidden, weight, labels, cotangent, method: str | None = None):
    """``jax.vjp`` of ``jaxsce.linear_softmax_cross_entropy`` (``reduction="sum"`` for a
    scalar cotangent, ``"none"`` for a vector) in the weight; None when ``method`` is absent."""
    fn = jaxsce.linear_softmax_cross_entropy
    kw = {}
    if method is not None:
        if not has_option(fn, "method"):
            return None
        kw["method"] = method
    reduction = "sum" if jnp.ndim(cotangent) == 0 else "none"
    out, vjp = jax.vjp(lambda w: fn(hidden, w, labels, reduction=reduction, **kw), weight)
    return vjp(jnp.asarray(cotangent, out.dtype))[0]


def entropy(z: jax.Array) -> jax.Array:
    """The softmax entropy from the library's ``softmax`` and ``log_softmax`` (it has no
    entropy function)."""
    return -jnp.sum(jaxsce.softmax(z) * jaxsce.log_softmax(z), axis=-1)


def linear_softcap_gradient(hidden, weight, labels, cap: float):
    """Gradient in the weight of ``jaxsce.linear_softmax_cross_entropy`` with
    ``logit_softcap=cap`` (``reduction="sum"``), or None while it has no such option."""
    fn = jaxsce.linear_softmax_cross_entropy
    if not has_option(fn, "logit_softcap"):
        return None
    return jax.grad(
        lambda w: fn(hidden, w, labels, reduction="sum", logit_softcap=cap)
    )(weight)
