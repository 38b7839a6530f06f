r"""The gradient terms of the library's options: class weights, label smoothing, z-loss.

.. math::
  L = \sum_c y_c (\ell - z_c) + \zeta \ell^2, \quad \ell = \log \sum_m e^{z_m}, \qquad
  \frac{\partial L}{\partial z_j} = p_j \Bigl(\sum_c y_c + 2 \zeta \ell\Bigr) - y_j

with :math:`y` the effective target.  Each option is derived from its own definition and
proven to be an instance of this formula.
"""

from __future__ import annotations

import sympy as sp

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._prover import prove

c, j, k, n, p, t, w, z = A.c, A.j, A.k, A.n, A.p, A.t, A.w, A.z
eps, zeta, lse = A.eps, A.zeta, A.lse
d = sp.Derivative
label = A.c  # the integer label


def _lse() -> sp.Expr:
    return sp.log(A.normaliser())


def general(target: sp.Expr, index: sp.Symbol = k) -> sp.Expr:
    r"""The general loss :math:`\sum_c y_c (\ell - z_c) + \zeta \ell^2` for ``target`` = y_c."""
    return sp.Sum(target * (_lse() - z[index]), (index, 1, n)) + zeta * _lse() ** 2


def general_gradient(target: sp.Expr, index: sp.Symbol = k) -> sp.Expr:
    r""":math:`p_j (\sum_c y_c + 2\zeta\ell) - y_j` with ``target`` the expression of y_c."""
    total = sp.Sum(target, (index, 1, n))
    return p[j] * (total + 2 * zeta * lse) - target.xreplace({index: j})


def options() -> Derivation:
    """Derive the gradient of the general loss and of each option as an instance of it."""
    out = Derivation(
        "options",
        "Options: class weights, label smoothing, z-loss",
        ("004",),
        "Extends",
        "jaxsce.softmax_cross_entropy's options",
    )
    ctx = A.context(j) & A.context(label)
    Ls = sp.Symbol("L")
    L = general(A.y[k])
    out.say("General per-example loss, y the effective target, zeta the z-loss:", Ls, L)
    raw = sp.diff(L, z[j])
    closed = general_gradient(A.y[k])
    out.say(
        "d lse/dz_j = p_j, so each term of the sum gives y_c (p_j - delta_cj):",
        d(Ls, z[j]),
        closed,
        prove("dL/dz_j = p_j (sum(y) + 2 zeta lse) - y_j", raw, closed, ctx),
    )
    out.rejected.append(
        prove(
            "z-loss gradient without the factor 2",
            raw,
            p[j] * (A.sum_of(A.y) + zeta * lse) - A.y[j],
            ctx,
        )
    )
    one_hot = A.delta(k, label)
    cases = [
        (
            "Class weights, integer label c: y = w_c e_c",
            w[label] * (_lse() - z[label]) + zeta * _lse() ** 2,
            w[k] * one_hot,
        ),
        ("Class weights, probability targets t: y_k = w_k t_k", general(w[k] * t[k]), w[k] * t[k]),
        (
            "PyTorch smoothing, label c: y_k = w_k ((1 - eps) delta_kc + eps/n)",
            (1 - eps) * w[label] * (_lse() - z[label])
            + eps / n * sp.Sum(w[k] * (_lse() - z[k]), (k, 1, n))
            + zeta * _lse() ** 2,
            w[k] * ((1 - eps) * one_hot + eps / n),
        ),
        (
            "PyTorch smoothing, targets t: y_k = w_k ((1 - eps) t_k + eps/n)",
            general(w[k] * ((1 - eps) * t[k] + eps / n)),
            w[k] * ((1 - eps) * t[k] + eps / n),
        ),
    ]
    for text, loss, target in cases:
        raw_case = sp.diff(loss, z[j])
        claimed = A.to_p(A.evaluate(general_gradient(target), ctx))
        out.say(text + ":", d(Ls, z[j]), claimed, prove(text.split(":")[0], raw_case, claimed, ctx))
    t5 = (1 - eps) * one_hot + eps / (n - 1) * (1 - one_hot)
    total = A.evaluate(sp.Sum(t5, (k, 1, n)), ctx)
    out.say(
        "T5X smoothing: 1 - eps on the label, eps/(n-1) elsewhere; it sums to",
        sp.Sum(t5, (k, 1, n)),
        sp.simplify(total),
    )
    entropy = -((1 - eps) * sp.log(1 - eps) + eps * sp.log(eps / (n - 1)))
    loss = general(t5) - entropy
    out.say("T5X subtracts the entropy of its target, a constant in z:", Ls, loss)
    claimed = A.to_p(A.evaluate(general_gradient(t5), ctx))
    claimed = sp.collect(sp.expand(sp.simplify(claimed)), [p[j], A.delta(c, j)], sp.factor)
    out.say(
        "So the gradient is the general one with y = the smoothed target:",
        d(Ls, z[j]),
        claimed,
        prove("T5X smoothing", A.evaluate(sp.diff(loss, z[j]), ctx), claimed, ctx),
    )
    out.formula("general_gradient", closed, (j,), (A.p, A.y, zeta, lse))
    return out
