r"""The prover: a derived expression equals a claimed closed form, or a witness says it does not.

A claim is proven when the residual, derived minus claimed, rewritten by
:func:`symbolic._algebra.evaluate` and :func:`symbolic._algebra.to_p` and simplified, is
exactly zero for a symbolic number of classes.  Independently of that rewriting, the raw
derivative is also compared with the claim at random points of a small instance (three
classes, the logits :math:`z_k = \log q_k` of random rationals :math:`q_k`, so that the
comparison is exact rational arithmetic).  A claim that is not zero there gets a witness:
the point and the non-zero value of the residual.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable

import sympy as sp

from symbolic import _algebra as A

_INDICES = (A.i, A.j, A.c, A.r, A.s)
_SIZES = {A.n: 3, A.B: 2, A.d: 2}
_UPPER = {A.i: A.n, A.j: A.n, A.c: A.n, A.r: A.d, A.s: A.n}


@dataclasses.dataclass(frozen=True)
class Proof:
    """The outcome of :func:`prove`.

    Attributes:
      name: what is claimed, in words.
      derived: the derivative sympy computed, as a function of ``p``.
      claimed: the closed form it is claimed to equal.
      residual: ``derived - claimed`` after rewriting; zero when proven.
      holds: the residual is identically zero (for symbolic ``n``).
      exact: the raw derivative equals the claim at random points of a small instance.
      witness: when the claim is wrong, a point of a small instance where it fails.
    """

    name: str
    derived: sp.Expr
    claimed: sp.Expr
    residual: sp.Expr
    holds: bool
    exact: bool
    witness: dict[str, str] | None = None

    def __bool__(self) -> bool:
        return bool(self.holds) and bool(self.exact)


def _random_values(rng: random.Random, sizes: dict[sp.Symbol, int]) -> dict[sp.Expr, sp.Expr]:
    """Random rational values for every array entry of a small instance."""
    nn, bb, dd = sizes[A.n], sizes[A.B], sizes[A.d]

    def rat() -> sp.Rational:
        return sp.Rational(rng.randint(1, 9), rng.randint(1, 9))

    values: dict[sp.Expr, sp.Expr] = {}
    q = [rat() for _ in range(nn)]
    total = sum(q)
    for x in range(1, nn + 1):
        values[A.z[x]] = sp.log(q[x - 1])
        values[A.p[x]] = q[x - 1] / total
        for base in (A.y, A.w, A.t):
            values[base[x]] = rat()
        values[A.e[x]] = sp.Integer(x == 1)
    values[A.S] = total
    values[A.lse] = sp.log(total)
    for f in range(1, dd + 1):
        for x in range(1, nn + 1):
            values[A.theta[f, x]] = rat()
    for row in range(1, bb + 1):
        for f in range(1, dd + 1):
            values[A.X[row, f]] = rat()
        # P = softmax(X theta) row by row, so that P and theta describe the same point.
        ez = [
            sp.exp(sum(values[A.X[row, f]] * values[A.theta[f, x]] for f in range(1, dd + 1)))
            for x in range(1, nn + 1)
        ]
        for x in range(1, nn + 1):
            values[A.P[row, x]] = ez[x - 1] / sum(ez)
            values[A.Y[row, x]] = rat()
        values[A.Sb[row]] = sum(ez)
        values[A.G[row]] = rat()
    for scalar in (A.eps, A.zeta, A.const, A.g):
        values[scalar] = rat() / 10
    return values


def instantiate(
    expr: sp.Expr,
    index_values: dict[sp.Symbol, int],
    values: dict[sp.Expr, sp.Expr],
    sizes: dict[sp.Symbol, int] = _SIZES,
) -> sp.Expr:
    """``expr`` at a point of a small instance: sizes fixed, sums expanded, entries replaced."""
    expr = expr.xreplace({**sizes, **{k: sp.Integer(v) for k, v in index_values.items()}})
    expr = expr.doit()
    expr = expr.xreplace({k: v for k, v in values.items() if not isinstance(k, sp.Symbol)})
    return expr.xreplace({k: v for k, v in values.items() if isinstance(k, sp.Symbol)}).doit()


def _is_zero(value: sp.Expr) -> bool:
    """Exactly zero when rational; otherwise zero to 40 of 50 digits."""
    if value.is_Rational:
        return value == 0
    return abs(complex(sp.N(value, 50))) < 1e-40


def check_at_points(
    raw: sp.Expr, claimed: sp.Expr, points: int = 1, seed: int = 0
) -> tuple[bool, dict[str, str] | None]:
    """Compare ``raw`` and ``claimed`` at random points and all index values of a small instance.

    Returns:
      ``(True, None)`` when they agree everywhere, else ``(False, witness)``.
    """
    rng = random.Random(seed)
    free = [x for x in _INDICES if x in (raw - claimed).free_symbols]
    for _ in range(points):
        values = _random_values(rng, _SIZES)
        ranges = [range(1, _UPPER[x].xreplace(_SIZES) + 1) for x in free]
        for combo in itertools.islice(itertools.product(*ranges), 0, None, 2):
            index_values = dict(zip(free, combo, strict=True))
            diff = instantiate(raw, index_values, values) - instantiate(
                claimed, index_values, values
            )
            if not _is_zero(diff):
                witness = {str(k): str(v) for k, v in index_values.items()}
                witness["n"] = str(_SIZES[A.n])
                witness["residual"] = str(diff if diff.is_Rational else sp.N(diff, 6))
                return False, witness
    return True, None


def prove(
    name: str,
    raw: sp.Expr,
    claimed: sp.Expr,
    assumptions: sp.Boolean = sp.true,
    to_p: Callable[[sp.Expr], sp.Expr] = A.to_p,
    check: bool = True,
) -> Proof:
    r"""Prove that the raw derivative ``raw`` equals ``claimed`` for every number of classes.

    .. math::
      \operatorname{simplify}(\operatorname{to\_p}(\operatorname{evaluate}(
      \text{raw})) - \text{claimed}) = 0

    Args:
      name: the claim in words.
      raw: what ``sympy.diff`` returned (in the logits, with sums and deltas).
      claimed: the closed form, a function of ``p`` (and ``sum(y)``, ``lse``, ...).
      assumptions: facts for ``refine``, such as :math:`i, j \le n`.
      to_p: the rewriting into probabilities.
      check: also compare at random points of a three-class instance.

    Returns:
      A :class:`Proof`; ``bool(proof)`` is true only when both the symbolic proof and the
      comparison at points succeed.
    """
    derived = to_p(A.evaluate(raw, assumptions))
    residual = A.sift_deltas(A.evaluate(sp.expand(derived - claimed), assumptions))
    exact, witness = check_at_points(raw, claimed) if check else (True, None)
    # A residual that is not zero at a point is not identically zero: no need to simplify.
    if residual != 0 and exact:
        try:
            residual = sp.simplify(residual)
        except (StopIteration, TypeError, ValueError):  # sympy's sum_combine can fail on Sums
            pass
    holds = residual == 0
    if not check:
        exact = holds
    return Proof(name, derived, claimed, residual, holds, exact, witness)


def _rational(rng: random.Random) -> sp.Rational:
    return sp.Rational(rng.randint(1, 9), rng.randint(1, 9))


def at_random_points(
    name: str,
    difference: sp.Expr,
    free: dict[sp.Symbol, int],
    sizes: dict[sp.Symbol, int],
    logits: tuple[sp.IndexedBase, ...] = (A.z,),
    points: int = 2,
    seed: int = 0,
) -> tuple[bool, dict[str, str] | None]:
    r"""Whether ``difference`` is zero at random points of a small instance; else a witness.

    Independent of the symbolic rewriting: the sizes are fixed, every sum is expanded, every
    array entry and scalar gets a random rational (a logit the log of one, so that
    :math:`e^{z_k}` is rational) and the value is computed to 50 digits.

    Args:
      name: the claim, for the error message.
      difference: left side minus right side.
      free: each free index and how many values it takes.
      sizes: the value of each size symbol.
      logits: the arrays whose entries are logits.
      points: how many random points.
      seed: the seed of the points.

    Returns:
      ``(True, None)`` when zero everywhere, else ``(False, witness)``.
    """
    rng = random.Random(seed)
    ranges = [range(1, top + 1) for top in free.values()]
    for _ in range(points):
        values: dict[sp.Expr, sp.Expr] = {}
        for combo in itertools.product(*ranges):
            index_values = dict(zip(free, combo, strict=True))
            expr = difference.xreplace({**sizes, **index_values}).doit()
            entries = expr.atoms(sp.Indexed)
            labels = {entry.base.label for entry in entries}
            scalars = {x for x in expr.free_symbols if x.is_Symbol and not x.is_integer}
            for atom in sorted(entries | (scalars - labels), key=str):
                if atom not in values:
                    q = _rational(rng)
                    values[atom] = sp.log(q) if getattr(atom, "base", None) in logits else q
            value = expr.xreplace(values).doit()
            if value.free_symbols:
                raise ValueError(f"{name}: no value for {value.free_symbols} at {index_values}")
            if not _is_zero(value):
                used = {x: v for x, v in sizes.items() if x in difference.free_symbols}
                witness = {str(k): str(v) for k, v in {**used, **index_values}.items()}
                witness["residual"] = str(value if value.is_Rational else sp.N(value, 6))
                return False, witness
    return True, None


def prove_identity(
    name: str,
    lhs: sp.Expr,
    rhs: sp.Expr,
    free: dict[sp.Symbol, int],
    sizes: dict[sp.Symbol, int] = _SIZES,
    assumptions: sp.Boolean = sp.true,
    rewrite: Callable[[sp.Expr], sp.Expr] = A.to_p,
    defs: dict[sp.Expr, sp.Expr] | None = None,
    logits: tuple[sp.IndexedBase, ...] = (A.z,),
) -> Proof:
    r"""Prove ``lhs = rhs``, both written in the logits, for symbolic sizes.

    .. math::
      \operatorname{simplify}(\operatorname{rewrite}(\operatorname{evaluate}(
      \text{lhs} - \text{rhs}))) = 0

    then compares both sides at random points of a small instance (:func:`at_random_points`).

    Args:
      name: the claim in words.
      lhs: the left side.
      rhs: the right side.
      free: each free index and how many values it takes in the small instance.
      sizes: the sizes of the small instance.
      assumptions: facts for ``refine``, such as :math:`\tau \le n`.
      rewrite: the rewriting after :func:`symbolic._algebra.evaluate` (default: into ``p``).
      defs: definitions put in before the comparison at points (``lse`` as a log of a sum).
      logits: the arrays whose entries are logits.

    Returns:
      A :class:`Proof` that is true only when the residual is zero and the points agree.
    """
    diff = lhs - rhs
    residual = A.sift_deltas(A.evaluate(sp.expand(rewrite(A.evaluate(diff, assumptions)))))
    exact, witness = at_random_points(name, diff.xreplace(defs or {}), free, sizes, logits)
    # A residual that is not zero at a point is not identically zero: no need to simplify.
    if residual != 0 and exact:
        try:
            residual = sp.simplify(residual)
        except (StopIteration, TypeError, ValueError):
            pass
    return Proof(name, lhs, rhs, residual, residual == 0, exact, witness)
