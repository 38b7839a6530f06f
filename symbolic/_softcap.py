r"""Soft-capping of the logits: the chain rule through :math:`z = c \tanh(x / c)`.

.. math::
  \frac{\partial L}{\partial x_j} = \frac{\partial L}{\partial z_j}
  \Bigl(1 - \tanh^2 \frac{x_j}{c}\Bigr)
  = \bigl(p_j K - y_j\bigr)\Bigl(1 - \tanh^2 \frac{x_j}{c}\Bigr)
"""

from __future__ import annotations

import sympy as sp

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._prover import prove_identity

j, k, q, n, p, y = A.j, A.k, A.q, A.n, A.p, A.y
c, lse, zeta = A.cap, A.lse, A.zeta
x = sp.IndexedBase("x", real=True)  # the raw logits
d = sp.Derivative


def capped(index: sp.Expr) -> sp.Expr:
    r""":math:`z_k = c \tanh(x_k / c)`."""
    return c * sp.tanh(x[index] / c)


def _capped_logit(arg: sp.Expr) -> tuple[tuple[sp.Expr, ...], sp.Expr] | None:
    """c tanh(x_k / c) -> ((), k): a capped logit of one example."""
    factors = sp.Mul.make_args(arg)
    tanhs = [f for f in factors if isinstance(f, sp.tanh)]
    if len(tanhs) == 1 and sp.Mul(*[f for f in factors if f is not tanhs[0]]) == c:
        inner = tanhs[0].args[0] * c
        if isinstance(inner, sp.Indexed) and inner.base == x:
            return (), inner.indices[0]
    return None


def _to_p(expr: sp.Expr) -> sp.Expr:
    return A.to_p(expr, logit=_capped_logit)


def softcap() -> Derivation:
    r"""Derive the gradient of a loss of soft-capped logits (the ``logit_softcap`` option)."""
    out = Derivation("softcap", "Soft-capping the logits", (), "", "the logit_softcap option")
    ctx = A.context(j)
    Ls = sp.Symbol("L")
    xs = sp.Symbol("x", real=True)
    out.say("Soft-capping squashes x into (-c, c):", sp.Symbol("z"), c * sp.tanh(xs / c))
    out.say(
        "Its derivative, by the chain rule through tanh:",
        d(sp.Symbol("z"), xs),
        sp.diff(c * sp.tanh(xs / c), xs),
    )
    lse_x = sp.log(sp.Sum(sp.exp(capped(q)), (q, 1, n)))
    loss = sp.Sum(y[k] * (lse_x - capped(k)), (k, 1, n)) + zeta * lse_x**2
    out.say("The general loss of the capped logits:", Ls, loss)
    kk = A.sum_of(y) + 2 * zeta * lse
    p_j = sp.exp(capped(j)) / sp.Sum(sp.exp(capped(q)), (q, 1, n))
    raw = sp.diff(loss, x[j])
    defs = {lse: lse_x}
    free = {j: 3}
    right = (p_j * kk - y[j]) * (1 - sp.tanh(x[j] / c) ** 2)
    out.say(
        "Each logit's gradient, times the derivative of its cap:",
        d(Ls, x[j]),
        (p[j] * sp.Symbol("K") - y[j]) * (1 - sp.tanh(x[j] / c) ** 2),
        prove_identity(
            "dL/dx_j = dL/dz_j (1 - tanh^2(x_j / c))",
            raw,
            right,
            free,
            assumptions=ctx,
            rewrite=_to_p,
            defs=defs,
            logits=(),
        ),
    )
    out.say("With z_j = c tanh(x_j/c) already computed, 1 - tanh^2(x_j/c) = 1 - z_j^2/c^2.")
    out.rejected += [
        prove_identity(
            "dL/dx_j = dL/dz_j (1 - tanh^2(x_j)) (the 1/c inside tanh forgotten)",
            raw,
            (p_j * kk - y[j]) * (1 - sp.tanh(x[j]) ** 2),
            free,
            assumptions=ctx,
            rewrite=_to_p,
            defs=defs,
            logits=(),
        ),
        prove_identity(
            "dL/dx_j = dL/dz_j (1 - tanh^2(x_j / c)) / c (an extra 1/c)",
            raw,
            right / c,
            free,
            assumptions=ctx,
            rewrite=_to_p,
            defs=defs,
            logits=(),
        ),
    ]
    dz = sp.IndexedBase("dz")
    out.formula("softcap", capped(j), (j,), (x, c))
    out.formula("softcap_chain", dz[j] * (1 - sp.tanh(x[j] / c) ** 2), (j,), (dz, x, c))
    return out
