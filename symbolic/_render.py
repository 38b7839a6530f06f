r"""Rendering of derivations: readable terminal text, Markdown or a LaTeX document."""

from __future__ import annotations

import sympy as sp
from sympy.printing.str import StrPrinter

from symbolic._derivation import Derivation, Step
from symbolic._prover import Proof

_GREEK = {"epsilon": "ε", "zeta": "ζ", "sigma": "σ", "theta": "θ"}


class _Text(StrPrinter):
    """One-line formulas as the seeds write them: p_i, δ_ij, Σ_k, ∂L/∂z_j."""

    # sympy objects that print themselves (``Indexed._sympystr`` writes p[i])
    # would bypass the methods below; this name no object defines.
    printmethod = "_jaxsce_text"

    def _print_Indexed(self, expr):
        idx = "".join(self._print(x) for x in expr.indices)
        return f"{self._print(expr.base.label)}_{idx}"

    def _print_KroneckerDelta(self, expr):
        return "δ_" + "".join(self._print(x) for x in expr.args)

    def _print_Sum(self, expr):
        out = self.parenthesize(expr.function, 45)
        for var, _, _ in expr.limits:
            out = f"Σ_{self._print(var)} {out}"
        return out

    def _print_Derivative(self, expr):
        den = "".join(f"∂{self._print(v)}" for v, cnt in expr.variable_count for _ in range(cnt))
        num = "∂" if len(den.split("∂")) == 2 else f"∂^{len(den.split('∂')) - 1}"
        return f"{num}{self._print(expr.expr)}/{den}"

    def _print_Symbol(self, expr):
        return _GREEK.get(expr.name, expr.name)

    def _print_Function(self, expr):
        args = ", ".join(self._print(a) for a in expr.args)
        return f"{_GREEK.get(expr.func.__name__, expr.func.__name__)}({args})"

    def _print_MatrixBase(self, expr):
        rows = [[self._print(x) for x in expr.row(r)] for r in range(expr.rows)]
        width = max(len(cell) for row in rows for cell in row)
        return "\n".join("[" + ", ".join(c.rjust(width) for c in row) + "]" for row in rows)

    def _print_exp(self, expr):
        return f"exp({self._print(expr.args[0])})"


def text(expr: sp.Expr) -> str:
    """A formula on one line."""
    return _Text().doprint(expr)


def _mark(proof: Proof) -> str:
    return "✓ proven" if proof else "✗ NOT proven"


def render_text(derivations: list[Derivation]) -> str:
    """Terminal output: each derivation, step by step, with its proofs and refuted claims."""
    lines = []
    for dv in derivations:
        lines += ["", f"== {dv.title} ({dv.seeds}) =="]
        for step in dv.steps:
            if step.text:
                lines.append(f"  {step.text}")
            if step.rhs is not None:
                lhs = f"{text(step.lhs)} = " if step.lhs is not None else "  = "
                rhs = text(step.rhs).replace("\n", "\n" + " " * (6 + len(lhs)))
                lines.append(f"      {lhs}{rhs}")
            if step.proof is not None:
                lines.append(f"      [{_mark(step.proof)}: {step.proof.name}]")
        for proof in dv.rejected:
            ok = not (proof.holds or proof.exact)
            where = ", ".join(f"{k}={v}" for k, v in (proof.witness or {}).items())
            lines.append(f"  {'✓ refuted' if ok else '✗ NOT refuted'}: {proof.name}  ({where})")
    return "\n".join(lines) + "\n"


def _latex_step(step: Step) -> str:
    if step.rhs is None:
        return ""
    lhs = sp.latex(step.lhs) + " = " if step.lhs is not None else "= "
    return lhs + sp.latex(step.rhs)


def render_markdown(derivations: list[Derivation]) -> str:
    """A Markdown document with $$ math blocks."""
    out = ["# Derivations of jaxsce, proven by sympy", ""]
    for dv in derivations:
        out += [f"## {dv.title}", "", f"*As in {dv.seeds}.*", ""]
        for step in dv.steps:
            if step.text:
                out += [step.text, ""]
            if step.rhs is not None:
                out += ["$$", _latex_step(step), "$$", ""]
            if step.proof is not None:
                out += [f"> {_mark(step.proof)}: `{step.proof.name}`", ""]
        for proof in dv.rejected:
            out += [f"- refuted: `{proof.name}` (witness {proof.witness})"]
        out.append("")
    return "\n".join(out)


def render_latex(derivations: list[Derivation]) -> str:
    """A standalone LaTeX document."""
    out = [
        r"\documentclass{article}",
        r"\usepackage{amsmath,amssymb}",
        r"\allowdisplaybreaks",
        r"\begin{document}",
        r"\section*{Derivations of jaxsce, proven by sympy}",
    ]
    for dv in derivations:
        out += [rf"\subsection*{{{dv.title}}}", rf"\emph{{As in {dv.seeds}.}}", ""]
        for step in dv.steps:
            if step.text:
                out += [r"\noindent " + step.text.replace("_", r"\_").replace("^", r"\^{}") + r"\\"]
            if step.rhs is not None:
                out += [r"\begin{equation*}", _latex_step(step), r"\end{equation*}"]
            if step.proof is not None:
                out += [
                    rf"\noindent\textit{{{_mark(step.proof)[2:]}: "
                    + step.proof.name.replace("_", r"\_").replace("^", r"\^{}")
                    + r"}\\"
                ]
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"
