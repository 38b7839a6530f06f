r"""Computing the gradient in the forward pass: when the backward may just scale it.

For a loss reduced to a scalar, :math:`L = \sum_b \ell_b`, the gradient
:math:`G = \partial L / \partial \theta` can be computed in the forward pass and the
backward pass returns :math:`g\,G` for the cotangent :math:`g`. With per-example losses
(``reduction="none"``) the cotangent is a vector :math:`g_b`, the weight gradient is
:math:`\sum_b g_b\, \partial \ell_b / \partial \theta`, and no multiple of :math:`G` equals it.
"""

from __future__ import annotations

import functools

import sympy as sp

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._prover import prove
from symbolic._regression import logit

b, c, k, q, r, s = A.b, A.c, A.k, A.q, A.r, A.s
B, n, X, Y, P, theta, g, G = A.B, A.n, A.X, A.Y, A.P, A.theta, A.g, A.G
d = sp.Derivative
to_P = functools.partial(A.to_p, logit=A._linear_logit, probs=A.P)


def scaling() -> Derivation:
    r"""Prove :math:`\partial (g L) / \partial \theta = g\, G` and refute it for per-example
    cotangents (``method="precompute"`` of the linear loss)."""
    out = Derivation("scaling", "The gradient computed in the forward pass", ("002",), "Extends",
        "jaxsce.linear_softmax_cross_entropy")
    ctx = A.context(r, upper=A.d) & A.context(s)
    Ls = sp.Symbol("L")
    lse_b = sp.log(sp.Sum(sp.exp(logit(b, q)), (q, 1, n)))
    ell = sp.Sum(Y[b, c] * (lse_b - logit(b, c)), (c, 1, n))
    L = sp.Sum(ell, (b, 1, B))
    out.say("The per-example losses of softmax(X theta), summed to a scalar:", Ls, L)
    grad = sp.Sum(X[b, r] * (P[b, s] * sp.Sum(Y[b, k], (k, 1, n)) - Y[b, s]), (b, 1, B))
    out.say("The forward pass stores its gradient (as in the regression):", sp.Symbol("G_rs"), grad)
    raw = sp.diff(g * L, theta[r, s])
    out.say(
        "The backward pass of a scalar loss gets one cotangent g and returns g G:",
        d(g * Ls, theta[r, s]),
        g * grad,
        prove("d(g L)/dtheta = g G", raw, g * grad, ctx, to_p=to_P),
    )
    per_example = sp.diff(sp.Sum(G[b] * ell, (b, 1, B)), theta[r, s])
    right = sp.Sum(G[b] * X[b, r] * (P[b, s] * sp.Sum(Y[b, k], (k, 1, n)) - Y[b, s]), (b, 1, B))
    out.say(
        "Per-example losses get one cotangent g_b per example; the weight gradient weights "
        "each example's term by its own g_b:",
        d(sp.Sum(G[b] * sp.Symbol("l_b"), (b, 1, B)), theta[r, s]),
        right,
        prove(
            "vjp with per-example g_b = sum_b g_b X_br (P_bs sum(Y_b) - Y_bs)",
            per_example,
            right,
            ctx,
            to_p=to_P,
        ),
    )
    out.say(
        "The stored G has already summed over b, so it cannot be rescaled into that sum: "
        "with per-example cotangents the gradient must be recomputed (or kept per example). "
        "The gradient in the logits or the hidden states has one row per example and does "
        "scale row by row, g_b times its row."
    )
    mean_g = sp.Sum(G[b], (b, 1, B)) / B
    out.rejected += [
        prove("vjp with per-example g_b = mean(g) G", per_example, mean_g * grad, ctx, to_p=to_P),
        prove("vjp with per-example g_b = g_1 G", per_example, G[1] * grad, ctx, to_p=to_P),
    ]
    out.formula("stored_gradient", grad, (r, s), (X, P, Y))
    out.formula("per_example_vjp", right, (r, s), (G, X, P, Y))
    return out
