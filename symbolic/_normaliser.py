r"""What the library computes: the normaliser as ``m + log1p(r)`` and the fused backward.

.. math::
  \operatorname{lse} = m + \operatorname{log1p}(r), \quad
  m = z_\tau, \quad r = \sum_{k \ne \tau} e^{z_k - m}, \quad
  1 - p_\tau = \frac{r}{1 + r}, \qquad
  \frac{(e_j K - y_j) - y_j r}{1 + r} = p_j K - y_j, \quad
  K = \sum_k y_k + 2 \zeta \operatorname{lse}

The identities hold for any pivot class :math:`\tau`; the library pivots on the largest
logit, which makes every exponent :math:`\le 0`.
"""

from __future__ import annotations

import sympy as sp
from sympy.codegen.cfunctions import log1p

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._options import general
from symbolic._prover import prove_identity

j, k, n, p, tau, y, z = A.j, A.k, A.n, A.p, A.tau, A.y, A.z
lse, zeta = A.lse, A.zeta
d = sp.Derivative
m = sp.Symbol("m", real=True)  # the pivot logit z_tau, shown as m
r_sym = sp.Symbol("r", nonnegative=True)  # the rest, shown as r
top = A.e  # one-hot of the pivot class, as the JAX functions take it


def rest(index: sp.Symbol = k) -> sp.Expr:
    r""":math:`r = \sum_k (1 - \delta_{k\tau}) e^{z_k - z_\tau}`: every class but the pivot."""
    return sp.Sum((1 - A.delta(index, tau)) * sp.exp(z[index] - z[tau]), (index, 1, n))


def _logs(expr: sp.Expr) -> sp.Expr:
    """Expand logarithms (of positive sums), leaving the logits."""
    return sp.expand(sp.expand_log(expr.replace(log1p, lambda x: sp.log(1 + x)), force=True))


def normaliser() -> Derivation:
    r"""Derive :math:`\operatorname{lse} = m + \operatorname{log1p}(r)` and
    :math:`1 - p_\tau = r / (1 + r)` (``jaxsce._logsumexp.max_and_rest``)."""
    out = Derivation("normaliser", "The normaliser as the library computes it", ("000",), "Extends",
        "jaxsce._logsumexp.max_and_rest")
    ctx = A.context(tau)
    free = {tau: 3}
    S = A.normaliser(k)
    out.say("Pivot on one class tau (the library takes the largest logit) and let", m, z[tau])
    out.say("The rest: every class but the pivot, shifted by m:", r_sym, rest())
    one_plus_r = A.evaluate(1 + rest(), ctx)
    out.say("The pivot's own term is e^0 = 1, so", 1 + r_sym, one_plus_r)
    claim = z[tau] + log1p(rest())
    out.say(
        "Take the logarithm; the shift comes out of the sum:",
        sp.log(S),
        m + log1p(r_sym),
        prove_identity(
            "lse = m + log1p(r)", claim, sp.log(S), free, assumptions=ctx, rewrite=_logs
        ),
    )
    p_top = sp.exp(z[tau]) / S
    out.say(
        "The pivot's probability is 1/(1 + r), so its complement needs no subtraction:",
        1 - p[tau],
        r_sym / (1 + r_sym),
        prove_identity(
            "1 - p_tau = r / (1 + r)", 1 - p_top, rest() / (1 + rest()), free, assumptions=ctx
        ),
    )
    out.say(
        "For a confident prediction r is tiny: log1p(r) and r/(1 + r) keep it to full "
        "precision, where log(1 + r) and 1 - p round it away."
    )
    everything = sp.Sum(sp.exp(z[k] - z[tau]), (k, 1, n))
    out.rejected += [
        prove_identity(
            "lse = m + log1p(sum over every class, pivot included)",
            z[tau] + log1p(everything),
            sp.log(S),
            free,
            assumptions=ctx,
            rewrite=_logs,
        ),
        prove_identity(
            "1 - p_tau = r (first order only)", 1 - p_top, rest(), free, assumptions=ctx
        ),
    ]
    out.formula("rest", sp.Sum((1 - top[k]) * sp.exp(z[k] - m), (k, 1, n)), (), (z, top, m))
    out.formula("lse_from_rest", m + log1p(r_sym), (), (m, r_sym))
    out.formula("one_minus_p_top", r_sym / (1 + r_sym), (), (r_sym,))
    out.formula("logsumexp", sp.log(sp.Sum(sp.exp(z[k] - m), (k, 1, n))) + m, (), (z, m))
    return out


def fused_backward() -> Derivation:
    r"""Derive the library's backward :math:`((e K - y) - y r) / (1 + r) = p K - y`
    (``jaxsce._cross_entropy._xent_bwd``)."""
    out = Derivation("fused", "The fused backward as the library computes it", ("004",), "Extends",
        "jaxsce._cross_entropy._xent_bwd")
    ctx = A.context(j, tau)
    free = {j: 3, tau: 3}
    Ls = sp.Symbol("L")
    e_sym, K = sp.IndexedBase("e"), sp.Symbol("K")
    out.say("The general loss of the options, y the effective target:", Ls, general(y[k]))
    out.say("The shifted exponentials, 1 on the pivot:", e_sym[j], sp.exp(z[j] - m))
    out.say("With the z-loss folded into one factor:", K, A.sum_of(y) + 2 * zeta * lse)
    kk = A.sum_of(y) + 2 * zeta * lse
    fused = ((sp.exp(z[j] - z[tau]) * kk - y[j]) - y[j] * rest()) / (1 + rest())
    raw = sp.diff(general(y[k]), z[j])
    defs = {lse: sp.log(A.normaliser(k))}
    out.say(
        "The library writes the gradient over the common denominator 1 + r:",
        d(Ls, z[j]),
        ((e_sym[j] * K - y[j]) - y[j] * r_sym) / (1 + r_sym),
        prove_identity(
            "dL/dz_j = ((e_j K - y_j) - y_j r) / (1 + r)",
            raw,
            fused,
            free,
            assumptions=ctx,
            defs=defs,
        ),
    )
    out.say(
        "Since e_j / (1 + r) = p_j, that is the closed form of the options:",
        d(Ls, z[j]),
        p[j] * K - y[j],
        prove_identity(
            "((e_j K - y_j) - y_j r) / (1 + r) = p_j K - y_j",
            fused,
            sp.exp(z[j]) / A.normaliser(k) * kk - y[j],
            free,
            assumptions=ctx,
            defs=defs,
        ),
    )
    out.say(
        "On a one-hot target at the pivot (y_j = 1, e_j = 1, zeta = 0) it is -r/(1 + r): "
        "no cancellation in 1 - p."
    )
    out.rejected += [
        prove_identity(
            "dL/dz_j = (e_j K - y_j) / (1 + r) (the y_j r term dropped)",
            raw,
            (sp.exp(z[j] - z[tau]) * kk - y[j]) / (1 + rest()),
            free,
            assumptions=ctx,
            defs=defs,
        ),
        prove_identity(
            "dL/dz_j with K = sum(y) + zeta lse (no factor 2)",
            raw,
            fused.xreplace({zeta: zeta / 2}),
            free,
            assumptions=ctx,
            defs=defs,
        ),
    ]
    e_arr = sp.IndexedBase("e")
    out.formula(
        "fused_backward",
        ((e_arr[j] * K - y[j]) - y[j] * r_sym) / (1 + r_sym),
        (j,),
        (e_arr, y, K, r_sym),
    )
    out.formula("general_in_p", p[j] * K - y[j], (j,), (p, y, K))
    return out
