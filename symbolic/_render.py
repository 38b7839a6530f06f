r"""Rendering of derivations: readable terminal text, Markdown or a LaTeX document."""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.str import StrPrinter

from symbolic._derivation import Derivation, Step
from symbolic._prover import Proof
from symbolic._seeds import cite

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


def _refuted(proof: Proof) -> bool:
    return not (proof.holds or proof.exact)


def _witness(proof: Proof) -> str:
    """``i=1, n=3, residual=...``, or empty when the refutation has no witness."""
    return ", ".join(f"{k}={v}" for k, v in (proof.witness or {}).items())


def _sources(dv: Derivation, ascii_only: bool = False) -> list[str]:
    """Sentences naming the blog posts the derivation follows and what it implements."""
    out = []
    if dv.seeds:
        posts = "; ".join(cite(key, ascii_only) for key in dv.seeds)
        out.append(f"{dv.relation} {posts}.")
    if dv.implements:
        out.append(f"Proves the algorithm of {dv.implements}.")
    return out


def render_text(derivations: list[Derivation]) -> str:
    """Terminal output: each derivation, step by step, with its proofs and refuted claims."""
    lines = []
    for dv in derivations:
        lines += _body(dv, "text")
    return "\n".join(lines) + "\n"


def _body(dv: Derivation, fmt: str) -> list[str]:
    """The lines of one derivation, as rendered where it was derived (see ``prerender``)."""
    if fmt in dv.rendered:
        return dv.rendered[fmt]
    return {"text": _text_body, "markdown": _markdown_body, "latex": _latex_body}[fmt](dv)


def prerender(dv: Derivation) -> None:
    """Render ``dv`` in every format now, from the expressions as they were built.

    sympy rebuilds an unpickled expression through its constructor, which evaluates it
    again (``(δ - p) p (-y/p)`` comes back as ``-(δ - p) y``): a derivation from a worker
    process or from the cache would print other steps than the ones proven.
    """
    for fmt, body in (("text", _text_body), ("markdown", _markdown_body), ("latex", _latex_body)):
        dv.rendered[fmt] = body(dv)


def _text_body(dv: Derivation) -> list[str]:
    lines = ["", f"== {dv.title} =="]
    lines += [f"  {sentence}" for sentence in _sources(dv)]
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
        where = _witness(proof)
        mark = "✓ refuted" if _refuted(proof) else "✗ NOT refuted"
        lines.append(f"  {mark}: {proof.name}" + (f"  (witness: {where})" if where else ""))
    return lines


_COLUMNS = 3  # a wider explicit matrix is broken into blocks of this many columns


def _latex_matrix(lhs: str, matrix: sp.MatrixBase) -> str:
    """A wide matrix broken across lines: its column blocks one under the other."""
    blocks = [
        matrix[:, start : start + _COLUMNS] for start in range(0, matrix.cols, _COLUMNS)
    ]
    rows = []
    for number, block in enumerate(blocks):
        body = r" \\ ".join(
            " & ".join(sp.latex(block[r, c]) for c in range(block.cols)) for r in range(block.rows)
        )
        left = r"\left[" if number == 0 else r"\left."
        right = r"\right]" if number == len(blocks) - 1 else r"\right."
        rows.append(left + r"\begin{matrix}" + body + r"\end{matrix}" + right)
    return (
        r"\begin{aligned}"
        + lhs
        + r" &"
        + r" \\ & \quad ".join(rows)
        + r"\end{aligned}"
    )


def _latex_step(step: Step) -> str:
    if step.rhs is None:
        return ""
    lhs = sp.latex(step.lhs) + " = " if step.lhs is not None else "= "
    if isinstance(step.rhs, sp.MatrixBase) and step.rhs.cols > _COLUMNS:
        return _latex_matrix(lhs, step.rhs)
    return lhs + sp.latex(step.rhs)


# -- prose: plain words with the seeds' math notation (p_i, e^{z_i}, sum_m, delta_ij) ------

_NAMES = {
    "sum": r"\sum",
    "delta": r"\delta",
    "eps": r"\varepsilon",
    "epsilon": r"\varepsilon",
    "zeta": r"\zeta",
    "sigma": r"\sigma",
    "theta": r"\theta",
    "tau": r"\tau",
    "kappa": r"\kappa",
    "mu": r"\mu",
    "tanh": r"\tanh",
    "exp": r"\exp",
    "log": r"\log",
    "lse": r"\operatorname{lse}",
    "log1p": r"\operatorname{log1p}",
    "inf": r"\infty",
}
_SCRIPT = r"(?:[_^](?:\{(?:[^{}]|\{[^{}]*\})*\}|[A-Za-z0-9]+))"
_TOKEN = re.compile(
    r"(?<![\w\\])-?(?:[A-Za-z]+/)?[A-Za-z0-9]+" + _SCRIPT + r"+"  # p_i, e^{z_i}, dL/dz_i
    r"|(?<![\w\\])-?(?:" + "|".join(sorted(_NAMES, key=len, reverse=True)) + r")(?![\w])"
    r"|<=|>=|!="
)
_RELATIONS = {"<=": r"\le", ">=": r"\ge", "!=": r"\ne"}
_ESCAPE = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\~{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


def _math_token(token: str) -> str:
    if token in _RELATIONS:
        return _RELATIONS[token]

    def name(match: re.Match) -> str:
        word = match.group(0)
        return _NAMES.get(word, word if len(word) == 1 else rf"\mathrm{{{word}}}")

    out = []
    # the base word and the words in sub/superscripts become symbols or upright names
    for piece in re.split(r"([_^]|[{}]|/|-)", token):
        out.append(re.sub(r"[A-Za-z]+", name, piece) if piece not in "_^{}/-" else piece)
    joined = "".join(out)
    # a multi-character script without braces gets them: delta_ji -> \delta_{ji}
    return re.sub(r"([_^])([A-Za-z0-9\\]+(?:\{[^{}]*\})?)", r"\1{\2}", joined)


# Python names (jaxsce._linear._combine_shards, logit_softcap) are code, not math.
_CODE = re.compile(r"(?<![\w$])[A-Za-z][\w]*(?:\.[\w]+|_[A-Za-z]{4,}\w*|_\w+_\w+)[\w.]*")


def _escape(plain: str) -> str:
    return "".join(_ESCAPE.get(c, c) for c in plain)


def _math_prose(words: str) -> str:
    out, last = [], 0
    for match in _TOKEN.finditer(words):
        out.append(_escape(words[last : match.start()]))
        out.append("$" + _math_token(match.group(0)) + "$")
        last = match.end()
    out.append(_escape(words[last:]))
    return "".join(out)


def latex_prose(words: str) -> str:
    """Prose with the seeds' plain math notation as LaTeX: math tokens in ``$...$``."""
    words = words.replace("✓", "").replace("✗", "")
    out, last = [], 0
    for match in _CODE.finditer(words):
        out.append(_math_prose(words[last : match.start()]))
        out.append(r"\texttt{" + _escape(match.group(0)) + "}")
        last = match.end()
    out.append(_math_prose(words[last:]))
    return "".join(out)


def render_markdown(derivations: list[Derivation]) -> str:
    """A Markdown document with $$ math blocks."""
    out = ["# Derivations of jaxsce, proven by sympy", ""]
    for dv in derivations:
        out += _body(dv, "markdown")
    return "\n".join(out)


def _markdown_body(dv: Derivation) -> list[str]:
    out = [f"## {dv.title}", ""]
    out += [f"*{sentence}*" for sentence in _sources(dv)] + [""]
    for step in dv.steps:
        if step.text:
            out += [step.text, ""]
        if step.rhs is not None:
            out += ["$$", _latex_step(step), "$$", ""]
        if step.proof is not None:
            out += [f"> {_mark(step.proof)}: `{step.proof.name}`", ""]
    for proof in dv.rejected:
        where = _witness(proof)
        mark = "refuted" if _refuted(proof) else "NOT refuted"
        out += [f"- {mark}: `{proof.name}`" + (f" (witness: {where})" if where else "")]
    out.append("")
    return out


def render_latex(derivations: list[Derivation]) -> str:
    """A standalone LaTeX document (pdflatex; only the amsmath and geometry packages)."""
    out = [
        r"\documentclass{article}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage[utf8]{inputenc}",
        r"\usepackage{amsmath,amssymb}",
        r"\usepackage[margin=2.5cm]{geometry}",
        r"\allowdisplaybreaks",
        r"\begin{document}",
        r"\section*{Derivations of jaxsce, proven by sympy}",
    ]
    for dv in derivations:
        out += _body(dv, "latex")
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


def _latex_body(dv: Derivation) -> list[str]:
    out = [rf"\subsection*{{{latex_prose(dv.title)}}}"]
    out += [r"\noindent\emph{" + latex_prose(s) + r"}\par" for s in _sources(dv, True)]
    out += [r"\medskip"]
    for step in dv.steps:
        if step.text:
            out += [r"\noindent " + latex_prose(step.text) + r"\par"]
        if step.rhs is not None:
            out += [r"\begin{equation*}", _latex_step(step), r"\end{equation*}"]
        if step.proof is not None:
            out += [
                rf"\noindent\textit{{{_mark(step.proof)[2:]}: "
                + latex_prose(step.proof.name)
                + r"}\par"
            ]
    for proof in dv.rejected:
        where = _witness(proof)
        mark = "refuted" if _refuted(proof) else "NOT refuted"
        out += [
            r"\noindent\textit{" + mark + ":} " + latex_prose(proof.name)
            + (" (witness: " + latex_prose(where) + ")" if where else "")
            + r"\par"
        ]
    return out
