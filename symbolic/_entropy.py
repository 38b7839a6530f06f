r"""The entropy of the softmax and its gradient in the logits.

.. math::
  H = -\sum_k p_k \log p_k = \operatorname{lse} - \sum_k p_k z_k, \qquad
  \frac{\partial H}{\partial z_i} = -p_i \Bigl(z_i - \sum_k p_k z_k\Bigr)
"""

from __future__ import annotations

import sympy as sp

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._prover import prove

i, k, n, p, z, lse = A.i, A.k, A.n, A.p, A.z, A.lse
d = sp.Derivative


def entropy() -> Derivation:
    r"""Derive :math:`H = \operatorname{lse} - \sum_k p_k z_k` and its gradient."""
    out = Derivation("entropy", "Entropy of the softmax", ("001",), "Extends")
    Hs = sp.Symbol("H")
    H = -sp.Sum(A.softmax(k) * (z[k] - sp.log(A.normaliser())), (k, 1, n))
    out.say("The entropy, with log p_k = z_k - lse:", Hs, -sp.Sum(p[k] * sp.log(p[k]), (k, 1, n)))
    out.say("", Hs, -sp.Sum(p[k] * (z[k] - lse), (k, 1, n)))
    mean_z = sp.Sum(p[k] * z[k], (k, 1, n))
    closed = lse - mean_z
    out.say(
        "The probabilities sum to one:",
        Hs,
        closed,
        prove("H = lse - sum_k p_k z_k", H, closed, A.context()),
    )
    raw = sp.diff(H, z[i])
    grad = -p[i] * (z[i] - mean_z)
    out.say(
        "Differentiate: d lse/dz_i = p_i and d p_k/dz_i = p_k (delta_ki - p_i):",
        d(Hs, z[i]),
        grad,
        prove("dH/dz_i = -p_i (z_i - sum_k p_k z_k)", raw, grad, A.context(i)),
    )
    out.say("The gradient is zero at the uniform distribution (z_i all equal), where H = log n.")
    out.rejected += [
        prove("H = lse - sum_k z_k / n (the mean logit, not the p-weighted one)",
              H, lse - sp.Sum(z[k], (k, 1, n)) / A.n, A.context()),
        prove("dH/dz_i = -(1 + log p_i) (the gradient in p, used for z)",
              raw, -(1 + z[i] - lse), A.context(i)),
    ]
    out.formula("entropy", closed, (), (p, z, lse))
    out.formula("entropy_gradient", grad, (i,), (p, z))
    return out
