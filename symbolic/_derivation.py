r"""Containers for a derivation: its steps, its proofs and its closed forms for JAX."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import sympy as sp

from symbolic._bridge import jax_function
from symbolic._prover import Proof


@dataclasses.dataclass(frozen=True)
class Step:
    """One line of a derivation: words, then ``lhs = rhs`` (each optional), then its proof."""

    text: str
    lhs: sp.Expr | None = None
    rhs: sp.Expr | None = None
    proof: Proof | None = None


@dataclasses.dataclass(frozen=True)
class Formula:
    r"""A proven closed form and how it is evaluated as a JAX function.

    Attributes:
      name: short identifier, e.g. ``"softmax_jacobian"``.
      expr: the closed form, e.g. :math:`p_i (\delta_{ij} - p_j)`.
      free: its free indices, the trailing axes of the JAX result.
      args: the arrays and scalars the JAX function takes, in order.
    """

    name: str
    expr: sp.Expr
    free: tuple[sp.Symbol, ...]
    args: tuple[sp.IndexedBase | sp.Symbol, ...]

    def __getstate__(self) -> dict:
        """Pickle the sympy form only; the JAX function is rebuilt on first use."""
        state = dict(self.__dict__)
        state.pop("jax", None)
        return state

    @functools.cached_property
    def jax(self) -> Callable:
        """The closed form as a jittable, vmappable JAX function of ``args``."""
        return jax_function(self.expr, self.free, self.args)


@dataclasses.dataclass
class Derivation:
    """A derivation as the seeds write it, with every claim proven by sympy.

    Attributes:
      key: short identifier (``"jacobian"``, ``"gradient"``, ...).
      title: the heading.
      seeds: keys of the blog posts (:data:`symbolic._seeds.SEEDS`) it follows or extends.
      relation: how it relates to them: ``"As in"`` or ``"Extends"``.
      implements: the library function whose algorithm it proves, if any.
      steps: the derivation, step by step.
      rejected: wrong claims, each of which the prover must refute with a witness.
      formulas: the proven closed forms, ready for JAX.
      rendered: its lines in each output format, rendered by :meth:`prerender` from the
        expressions as built (an unpickled copy of them is re-evaluated by sympy).
    """

    key: str
    title: str
    seeds: tuple[str, ...] = ()
    relation: str = "As in"
    implements: str = ""
    steps: list[Step] = dataclasses.field(default_factory=list)
    rejected: list[Proof] = dataclasses.field(default_factory=list)
    formulas: dict[str, Formula] = dataclasses.field(default_factory=dict)
    rendered: dict[str, list[str]] = dataclasses.field(default_factory=dict, repr=False)

    def prerender(self) -> None:
        """Render every output format now, before the derivation is pickled."""
        from symbolic._render import prerender

        prerender(self)

    def say(
        self,
        text: str,
        lhs: sp.Expr | None = None,
        rhs: sp.Expr | None = None,
        proof: Proof | None = None,
    ) -> None:
        """Append a step."""
        self.steps.append(Step(text, lhs, rhs, proof))

    def formula(
        self,
        name: str,
        expr: sp.Expr,
        free: Sequence[sp.Symbol],
        args: Sequence[sp.IndexedBase | sp.Symbol],
    ) -> None:
        """Record a proven closed form for the JAX bridge."""
        self.formulas[name] = Formula(name, expr, tuple(free), tuple(args))

    @property
    def proofs(self) -> list[Proof]:
        """Every proof made along the way."""
        return [step.proof for step in self.steps if step.proof is not None]

    @property
    def ok(self) -> bool:
        """Every claim proven and every wrong claim refuted."""
        return all(self.proofs) and not any(proof.holds or proof.exact for proof in self.rejected)
