r"""The sigmoid, its derivative and the binary cross-entropy gradient (seed 001).

.. math::
  \sigma(z) = \frac{1}{1 + e^{-z}}, \qquad \sigma' = \sigma (1 - \sigma), \qquad
  \frac{\partial}{\partial z}\bigl[-y \log \sigma - (1 - y) \log (1 - \sigma)\bigr] = \sigma - y
"""

from __future__ import annotations

import sympy as sp

from symbolic._derivation import Derivation
from symbolic._prover import Proof

x = sp.Symbol("x", real=True)  # the logit
label = sp.Symbol("y", real=True)  # the target, any real (not only 0 or 1)
sig = sp.Symbol("sigma", positive=True)  # sigma(x), kept opaque in closed forms
d = sp.Derivative


def sigmoid(arg: sp.Expr = x) -> sp.Expr:
    r""":math:`\sigma(x) = 1 / (1 + e^{-x})`."""
    return 1 / (1 + sp.exp(-arg))


def _prove_scalar(name: str, raw: sp.Expr, claimed: sp.Expr) -> Proof:
    """Prove a one-variable identity with sigma written back as sigmoid(x); witness at x = 1/3."""
    residual = sp.simplify(raw - claimed.xreplace({sig: sigmoid()}))
    witness = None
    value = sp.N(residual.xreplace({x: sp.Rational(1, 3), label: sp.Rational(2, 7)}), 30)
    exact = abs(value) < 1e-25
    if not exact:
        witness = {"x": "1/3", "y": "2/7", "residual": str(sp.N(value, 6))}
    return Proof(name, sp.simplify(raw), claimed, residual, residual == 0, exact, witness)


def sigmoid_derivations() -> Derivation:
    r"""Derive :math:`\sigma' = \sigma(1-\sigma)`, the BCE gradient and softmax of two classes."""
    out = Derivation("sigmoid", "Sigmoid and binary cross-entropy", ("001",))
    s = sigmoid()
    out.say("The sigmoid:", sp.Function("sigma")(x), s)
    raw = sp.diff(s, x)
    out.say("Differentiate 1/(1 + e^{-x}):", d(sp.Function("sigma")(x), x), raw)
    closed = sig * (1 - sig)
    out.say(
        "e^{-x}/(1+e^{-x}) = 1 - sigma:",
        d(sp.Function("sigma")(x), x),
        closed,
        _prove_scalar("sigma' = sigma (1 - sigma)", raw, closed),
    )
    L = -label * sp.log(s) - (1 - label) * sp.log(1 - s)
    Ls = sp.Symbol("L")
    out.say(
        "Binary cross-entropy of the target y:",
        Ls,
        -label * sp.log(sig) - (1 - label) * sp.log(1 - sig),
    )
    dL_dsig = sp.diff(-label * sp.log(sig) - (1 - label) * sp.log(1 - sig), sig)
    out.say("Its derivative in sigma:", d(Ls, sig), dL_dsig)
    out.say(
        "Chain rule, times sigma' = sigma (1 - sigma):",
        d(Ls, x),
        sp.Mul(dL_dsig, closed, evaluate=False),
    )
    grad = sig - label
    terms = [sp.cancel(term * closed) for term in sp.Add.make_args(dL_dsig)]
    out.say("Multiply out:", d(Ls, x), sp.Add(*terms, evaluate=False))
    out.say(
        "The sigma y terms cancel:",
        d(Ls, x),
        sp.expand(sum(terms)),
        _prove_scalar("dBCE/dx = sigma(x) - y", sp.diff(L, x), grad),
    )
    out.say("For any real y, not only y in {0, 1}.")
    z1, z2 = sp.symbols("z_1 z_2", real=True)
    two = sp.exp(z1) / (sp.exp(z1) + sp.exp(z2))
    res = sp.simplify(two - sigmoid(z1 - z2))
    out.say(
        "Softmax of two classes is the sigmoid of the difference:",
        two,
        sigmoid(z1 - z2),
        Proof(
            "softmax([z1, z2])_1 = sigma(z1 - z2)", two, sigmoid(z1 - z2), res, res == 0, res == 0
        ),
    )
    out.rejected += [
        _prove_scalar("sigma' = sigma^2", raw, sig**2),
        _prove_scalar("dBCE/dx = y - sigma(x)", sp.diff(L, x), label - sig),
        _prove_scalar("dBCE/dx = sigma(1 - sigma)(sigma - y)", sp.diff(L, x), closed * grad),
    ]
    out.formula("sigmoid_derivative", closed, (), (sig,))
    out.formula("bce_gradient", grad, (), (sig, label))
    return out
