r"""Bridge to JAX: an indexed sympy expression becomes a jittable, vmappable array function.

Every free index of the expression (``i``, ``j``, ...) becomes a trailing axis of the result,
every array ``base[u, v]`` is read from an argument whose trailing axes are its index slots,
every ``KroneckerDelta(u, v)`` is an identity matrix and every ``Sum`` a reduction over the
axis of its variable.  The scalar algebra between these leaves is compiled once by
``sympy.lambdify(..., modules="jax")``.  Leading axes of the arguments are batch axes and
broadcast.  Because the closed forms are functions of ``p`` (computed stably by the caller),
the result is stable at any logits.

Example::

  >>> from symbolic import _algebra as A
  >>> jac = jax_function(A.p[A.i] * (A.delta(A.i, A.j) - A.p[A.j]), (A.i, A.j), (A.p,))
  >>> jac(jax.nn.softmax(jnp.zeros(3))).shape
  (3, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import sympy as sp

_LEAVES = (sp.Indexed, sp.KroneckerDelta, sp.Sum)


def _bound_indices(expr: sp.Expr) -> list[sp.Symbol]:
    out: list[sp.Symbol] = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Sum):
            for limit in node.limits:
                if limit[0] not in out:
                    out.append(limit[0])
    return out


class _Compiled:
    """One lambdified layer: leaves replaced by placeholders, sums compiled recursively."""

    def __init__(self, expr: sp.Expr, order: Sequence[sp.Symbol]):
        leaves: list[sp.Expr] = []

        def collect(node: sp.Expr) -> None:
            if isinstance(node, _LEAVES) or node.is_Symbol:
                if node not in leaves:
                    leaves.append(node)
                return
            for arg in node.args:
                collect(arg)

        collect(expr)
        self.order = list(order)
        self.leaves = leaves
        self.placeholders = [sp.Dummy(f"x{n}") for n in range(len(leaves))]
        body = expr.xreplace(dict(zip(leaves, self.placeholders, strict=True)))
        self.fn = sp.lambdify(self.placeholders, body, modules="jax")
        self.sums = {
            leaf: _Compiled(
                sp.Sum(leaf.function, *leaf.limits[:-1]) if len(leaf.limits) > 1 else leaf.function,
                order,
            )
            for leaf in leaves
            if isinstance(leaf, sp.Sum)
        }

    def symbols(self) -> set[sp.Symbol]:
        """The scalar symbols read by this layer and the sums below it."""
        out = {x for x in self.leaves if x.is_Symbol}
        for inner in self.sums.values():
            out |= inner.symbols()
        return out

    def __call__(self, env: dict, sizes: dict) -> jax.Array:
        rank = len(self.order)
        vals = []
        for leaf in self.leaves:
            if isinstance(leaf, sp.Indexed):
                vals.append(_place(env[leaf.base], leaf.indices, self.order, sizes))
            elif isinstance(leaf, sp.KroneckerDelta):
                u, v = leaf.args
                vals.append(_arange(u, self.order, sizes) == _arange(v, self.order, sizes))
            elif isinstance(leaf, sp.Sum):
                var = leaf.limits[-1][0]
                inner = self.sums[leaf](env, sizes)
                axis = self.order.index(var) - rank
                vals.append(jnp.sum(inner, axis=axis, keepdims=True))
            else:
                value = jnp.asarray(env[leaf])
                vals.append(value.reshape(value.shape + (1,) * rank))
        return jnp.asarray(self.fn(*vals))


def _arange(index: sp.Symbol, order: Sequence[sp.Symbol], sizes: dict) -> jax.Array:
    shape = [1] * len(order)
    shape[order.index(index)] = sizes[index]
    return jnp.arange(sizes[index]).reshape(shape)


def _place(
    array: jax.Array, indices: Sequence[sp.Symbol], order: Sequence[sp.Symbol], sizes: dict
) -> jax.Array:
    """Move the index slots of ``array`` to their axes in ``order``; size 1 elsewhere."""
    array = jnp.asarray(array)
    rank = len(indices)
    positions = [order.index(x) for x in indices]
    if len(set(positions)) != rank:
        raise ValueError(f"repeated index in {indices}")
    batch = array.shape[: array.ndim - rank]
    perm = sorted(range(rank), key=lambda slot: positions[slot])
    array = jnp.transpose(array, tuple(range(len(batch))) + tuple(len(batch) + p for p in perm))
    shape = [1] * len(order)
    for slot in range(rank):
        shape[positions[slot]] = sizes[indices[slot]]
    return array.reshape(batch + tuple(shape))


def jax_function(
    expr: sp.Expr,
    free: Sequence[sp.Symbol],
    args: Sequence[sp.IndexedBase | sp.Symbol],
) -> Callable[..., jax.Array]:
    r"""Compile an indexed sympy expression into a JAX function of arrays.

    Args:
      expr: a closed form such as :math:`p_i (\delta_{ij} - p_j)`.
      free: its free indices, in the order of the trailing axes of the result.
      args: the arrays (``IndexedBase``) and scalars (``Symbol``) the function takes, in order.
        An array's trailing axes are its index slots; leading axes are batch axes.  A scalar
        may be a batch of scalars (shape of the batch).

    Returns:
      A function of ``len(args)`` arrays returning ``batch + (size of each free index,)``.
    """
    free = list(free)
    order = free + [x for x in _bound_indices(expr) if x not in free]
    compiled = _Compiled(expr, order)
    indexed = [x for x in sp.preorder_traversal(expr) if isinstance(x, sp.Indexed)]
    missing = {x.base for x in indexed} | compiled.symbols()
    missing -= set(args)
    if missing:
        raise ValueError(f"arguments missing for {sorted(map(str, missing))}")

    def fn(*arrays: jax.Array) -> jax.Array:
        # The leaves broadcast against each other by design (batch axes, size-1 index axes).
        with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
            return _fn(*arrays)

    def _fn(*arrays: jax.Array) -> jax.Array:
        env = dict(zip(args, arrays, strict=True))
        sizes: dict[sp.Symbol, int] = {}
        for leaf in indexed:
            arr = jnp.asarray(env[leaf.base])
            for slot, index in enumerate(leaf.indices):
                sizes.setdefault(index, arr.shape[arr.ndim - len(leaf.indices) + slot])
        out = compiled(env, sizes)
        rank = len(order)
        bound = tuple(pos - rank for pos in range(len(free), rank))
        out = (
            out.reshape(
                out.shape[: out.ndim - rank]
                + tuple(out.shape[out.ndim - rank + pos] for pos in range(len(free)))
            )
            if bound
            else out
        )
        batch = out.shape[: out.ndim - len(free)]
        return jnp.broadcast_to(out, batch + tuple(sizes[x] for x in free))

    fn.__doc__ = f"JAX function of {', '.join(map(str, args))} computing {expr}."
    return fn
