r"""Explicit n x n softmax Jacobian and loss Hessian for small n, written out as seed 000 does.

.. math::
  J = \begin{bmatrix} p_1 (1 - p_1) & -p_1 p_2 & \cdots \\ -p_2 p_1 & p_2 (1 - p_2) & \cdots
  \\ \vdots & & \ddots \end{bmatrix}, \qquad H = \textstyle\sum_k y_k \, J
"""

from __future__ import annotations

import random

import sympy as sp

from symbolic._derivation import Derivation
from symbolic._prover import Proof


def _check(raw: sp.Matrix, closed: sp.Matrix, zs, ps, ys, seed: int = 0) -> bool:
    """Exact comparison at a random rational point: z_k = log q_k, so e^{z_k} = q_k."""
    rng = random.Random(seed)
    q = [sp.Rational(rng.randint(1, 9), rng.randint(1, 9)) for _ in zs]
    yv = [sp.Rational(rng.randint(1, 9), rng.randint(1, 9)) for _ in ys]
    at_z = {
        **{zk: sp.log(qk) for zk, qk in zip(zs, q, strict=True)},
        **dict(zip(ys, yv, strict=True)),
    }
    at_p = {
        **{pk: qk / sum(q) for pk, qk in zip(ps, q, strict=True)},
        **dict(zip(ys, yv, strict=True)),
    }
    return (raw.xreplace(at_z).applyfunc(sp.simplify) - closed.xreplace(at_p)).is_zero_matrix


def matrices(sizes=(2, 3, 4, 5)) -> Derivation:
    """Differentiate softmax and the loss for each fixed n; check exactly against closed forms."""
    out = Derivation("matrices", "Explicit Jacobian and Hessian for small n", ("000",))
    for size in sizes:
        zs = sp.symbols(f"z_1:{size + 1}", real=True)
        ps = sp.symbols(f"p_1:{size + 1}", positive=True)
        ys = sp.symbols(f"y_1:{size + 1}", real=True)
        total = sum(sp.exp(x) for x in zs)
        soft = sp.Matrix([sp.exp(x) / total for x in zs])
        jac = soft.jacobian(zs)
        pv = sp.Matrix(ps)
        closed = sp.diag(*ps) - pv * pv.T
        ok = _check(jac, closed, zs, ps, ys)
        out.say(
            f"n = {size}: J = diag(p) - p p^T",
            sp.Symbol("J"),
            closed.applyfunc(sp.factor),
            Proof(f"n = {size} Jacobian", jac, closed, sp.S.Zero, ok, ok),
        )
        loss = -sum(yk * (zk - sp.log(total)) for yk, zk in zip(ys, zs, strict=True))
        hess = sp.hessian(loss, zs)
        hclosed = sum(ys) * closed
        ok = _check(hess, hclosed, zs, ps, ys, seed=1)
        out.say(
            f"n = {size}: H = sum(y) (diag(p) - p p^T), the J above times",
            sp.Symbol("H"),
            sp.Mul(sum(ys), sp.Symbol("J"), evaluate=False),
            Proof(f"n = {size} Hessian", hess, hclosed, sp.S.Zero, ok, ok),
        )
        if size == 3:
            out.rejected.append(
                Proof(
                    "n = 3 Jacobian without -p p^T",
                    jac,
                    sp.diag(*ps),
                    sp.S.One,
                    False,
                    _check(jac, sp.diag(*ps), zs, ps, ys),
                )
            )
    return out
