r"""The softmax Jacobian and shift invariance, derived as seeds 000, 001, 003 and 004 do.

.. math::
  \frac{\partial p_i}{\partial z_j} = p_i (\delta_{ij} - p_j), \qquad
  \operatorname{softmax}(z + C) = \operatorname{softmax}(z)
"""

from __future__ import annotations

import sympy as sp

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._prover import prove

i, j, m, n, p, z = A.i, A.j, A.m, A.n, A.p, A.z


def jacobian() -> Derivation:
    r"""Derive :math:`\partial p_i / \partial z_j = p_i (\delta_{ij} - p_j)` by the quotient rule.

    Returns:
      The derivation, its proofs (general form and the two cases) and its rejected claims.
    """
    out = Derivation("jacobian", "Softmax Jacobian", ("000", "001", "003", "004"))
    ctx = A.context(i, j)
    num, den = sp.exp(z[i]), A.normaliser()
    d = sp.Derivative
    out.say("Softmax of the logits z, for n classes:", p[i], num / den)
    out.say(
        "Quotient rule, numerator e^{z_i} and denominator sum_m e^{z_m}:",
        d(p[i], z[j]),
        (d(num, z[j]) * den - num * d(den, z[j])) / den**2,
    )
    dnum = sp.diff(num, z[j])
    out.say("The numerator depends on z_j only when i = j:", d(num, z[j]), dnum)
    dden_raw = sp.diff(den, z[j])
    dden = A.evaluate(dden_raw, ctx)
    out.say("In the denominator only the term m = j survives:", d(den, z[j]), dden_raw)
    out.say("", dden_raw, dden)
    raw = sp.diff(A.softmax(i), z[j])
    quotient = (dnum * den - num * dden) / den**2
    out.say("Together:", d(p[i], z[j]), quotient)
    closed = p[i] * (A.delta(i, j) - p[j])
    proof = prove("dp_i/dz_j = p_i (delta_ij - p_j)", raw, closed, ctx)
    out.say("Divide through by the denominator, e^{z_i}/sum = p_i:", d(p[i], z[j]), closed, proof)
    diag_raw = sp.diff(A.softmax(i), z[i])
    diag = p[i] * (1 - p[i])
    out.say(
        "Case i = j (delta_ii = 1):",
        d(p[i], z[i]),
        diag,
        prove("dp_i/dz_i = p_i (1 - p_i)", diag_raw, diag, A.context(i)),
    )
    off_raw = raw.xreplace({A.delta(i, j): 0})
    off = -p[i] * p[j]
    out.say(
        "Case i != j (delta_ij = 0):",
        d(p[i], z[j]),
        off,
        prove("dp_i/dz_j = -p_i p_j (i != j)", off_raw, off, ctx),
    )
    out.say("As a matrix: J = diag(p) - p p^T, symmetric.")
    out.rejected += [
        prove("Jacobian without its -p p^T term", raw, p[i] * A.delta(i, j), ctx),
        prove("Jacobian with p_j in place of p_i", raw, p[j] * (A.delta(i, j) - p[i] * 2), ctx),
    ]
    out.formula("softmax_jacobian", closed, (i, j), (p,))
    return out


def shift_invariance() -> Derivation:
    r"""Prove :math:`\operatorname{softmax}(z + C)_i = \operatorname{softmax}(z)_i`.

    Returns:
      The derivation (seed 003's constant, seed 000's max subtraction) and a rejected claim.
    """
    out = Derivation("shift", "Shift invariance", ("000", "003"))
    C = A.const
    shifted = sp.exp(z[i] + C) / sp.Sum(sp.exp(z[m] + C), (m, 1, n))
    out.say("Softmax of the shifted logits z + C:", sp.Function("p")(z[i] + C), shifted)
    expanded = A.evaluate(shifted)
    out.say("e^{z+C} = e^C e^z, and e^C leaves the sum:", None, expanded)
    out.say("e^C cancels:", None, sp.cancel(expanded))
    proof = prove("softmax(z + C) = softmax(z)", shifted, p[i], A.context(i))
    out.say("So the shift changes nothing:", sp.Function("p")(z[i] + C), p[i], proof)
    out.say("With C = -max(z) every exponent is <= 0: no overflow (the stable softmax).")
    out.rejected.append(
        prove("softmax(z + C) = e^C softmax(z)", shifted, sp.exp(C) * p[i], A.context(i))
    )
    out.formula("softmax", p[i], (i,), (p,))
    return out
