r"""Batched linear softmax regression (seed 002): the gradient of the mean loss in theta.

.. math::
  L(\theta) = \frac{1}{B} \sum_{b=1}^B \sum_{c=1}^n Y_{bc}
      \Bigl(\log \sum_q e^{(X\theta)_{bq}} - (X\theta)_{bc}\Bigr), \qquad
  \frac{\partial L}{\partial \theta} = \frac{1}{B} X^T (P - Y) \quad (\text{rows of } Y
  \text{ summing to } 1)
"""

from __future__ import annotations

import functools

import sympy as sp

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._prover import prove

a, b, c, k, q, r, s = A.a, A.b, A.c, A.k, A.q, A.r, A.s
B, n, X, Y, P, theta = A.B, A.n, A.X, A.Y, A.P, A.theta
d = sp.Derivative
to_P = functools.partial(A.to_p, logit=A._linear_logit, probs=A.P)


def logit(row: sp.Expr, cls: sp.Expr) -> sp.Expr:
    r""":math:`(X\theta)_{bc} = \sum_a X_{ba} \theta_{ac}`."""
    return sp.Sum(X[row, a] * theta[a, cls], (a, 1, A.d))


def regression() -> Derivation:
    r"""Derive :math:`\partial L / \partial \theta_{rs} = \frac1B \sum_b X_{br}
    (P_{bs} \sum_c Y_{bc} - Y_{bs})`, which is :math:`X^T (P - Y) / B` for rows summing to one.
    """
    out = Derivation("regression", "Batched linear softmax regression", ("002",))
    ctx = A.context(r, upper=A.d) & A.context(s)
    Ls = sp.Symbol("L")
    lse_b = sp.log(sp.Sum(sp.exp(logit(b, q)), (q, 1, n)))
    L = sp.Sum(Y[b, c] * (lse_b - logit(b, c)), (c, 1, n), (b, 1, B)) / B
    out.say("Mean cross-entropy of softmax(X theta) over the batch:", Ls, L)
    dZ = A.evaluate(sp.diff(logit(b, c), theta[r, s]), ctx)
    out.say("The logits are linear in theta:", d(sp.IndexedBase("Z")[b, c], theta[r, s]), dZ)

    Zs = sp.IndexedBase("Z")
    out.say(
        "Chain rule through every logit Z_bc:",
        d(Ls, theta[r, s]),
        sp.Sum(d(Ls, Zs[b, c]) * d(Zs[b, c], theta[r, s]), (c, 1, n), (b, 1, B)),
    )
    gZ = (P[b, c] * sp.Sum(Y[b, k], (k, 1, n)) - Y[b, c]) / B
    out.say("The per-example gradient (derived above) over B:", d(Ls, Zs[b, c]), gZ)
    chained = sp.Sum(gZ * dZ, (c, 1, n), (b, 1, B))
    collapsed = A.evaluate(chained, ctx)
    out.say("The delta_cs keeps c = s:", d(Ls, theta[r, s]), collapsed)
    closed = sp.Sum(X[b, r] * (P[b, s] * sp.Sum(Y[b, k], (k, 1, n)) - Y[b, s]), (b, 1, B)) / B
    raw = sp.diff(L, theta[r, s])
    proof = prove(
        "dL/dtheta_rs = sum_b X_br (P_bs sum_c Y_bc - Y_bs) / B", raw, closed, ctx, to_p=to_P
    )
    out.say("sympy's direct derivative of L(theta) agrees:", d(Ls, theta[r, s]), closed, proof)
    simple = sp.Sum(X[b, r] * (P[b, s] - Y[b, s]), (b, 1, B)) / B
    ones = A.evaluate(closed, ctx).replace(
        lambda x: isinstance(x, sp.Sum) and x.function == Y[b, x.limits[0][0]], lambda x: sp.S.One
    )
    sub = prove(
        "dL/dtheta = X^T (P - Y) / B given rows of Y summing to 1",
        ones,
        simple,
        ctx,
        to_p=to_P,
        check=False,
    )
    out.say(
        "Rows of Y summing to one: the seed's X^T (P - Y) / B:", d(Ls, theta[r, s]), simple, sub
    )
    out.rejected += [
        prove("dL/dtheta = X^T (P - Y) / B without rows summing to 1", raw, simple, ctx, to_p=to_P),
        prove("dL/dtheta = X^T (P - Y) (no 1/B)", raw, closed * B, ctx, to_p=to_P),
    ]
    out.formula("regression_gradient", closed, (r, s), (X, P, Y, B))
    return out
