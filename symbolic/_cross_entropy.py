r"""Cross-entropy: its gradient in the probabilities and in the logits, and its Hessian.

.. math::
  L = -\sum_k y_k \log p_k, \qquad
  \frac{\partial L}{\partial p_i} = -\frac{y_i}{p_i}, \qquad
  \frac{\partial L}{\partial z_i} = p_i \sum_k y_k - y_i, \qquad
  \frac{\partial^2 L}{\partial z_i \partial z_j} = \sum_k y_k \, p_i (\delta_{ij} - p_j)

The targets :math:`y` are any real weights: :math:`\sum_k y_k = 1` is used only where said.
"""

from __future__ import annotations

import sympy as sp

from symbolic import _algebra as A
from symbolic._derivation import Derivation
from symbolic._prover import prove

i, j, k, n, p, y, z = A.i, A.j, A.k, A.n, A.p, A.y, A.z
d = sp.Derivative


def loss_in_logits() -> sp.Expr:
    r""":math:`L(z) = -\sum_k y_k \log \operatorname{softmax}(z)_k`."""
    return -sp.Sum(y[k] * sp.log(A.softmax(k)), (k, 1, n))


def grad_p() -> Derivation:
    r"""Derive :math:`\partial L / \partial p_i = -y_i / p_i` (seed 001)."""
    out = Derivation("grad_p", "Cross-entropy in the probabilities", ("001",))
    L = -sp.Sum(y[k] * sp.log(p[k]), (k, 1, n))
    out.say("Cross-entropy of the probabilities p against the targets y:", sp.Symbol("L"), L)
    raw = sp.diff(L, p[i])
    out.say("Differentiate term by term:", d(sp.Symbol("L"), p[i]), raw)
    closed = -y[i] / p[i]
    proof = prove("dL/dp_i = -y_i / p_i", raw, closed, A.context(i))
    out.say("Only the term k = i depends on p_i:", d(sp.Symbol("L"), p[i]), closed, proof)
    out.rejected.append(prove("dL/dp_i = -1 / p_i", raw, -1 / p[i], A.context(i)))
    out.formula("grad_p", closed, (i,), (p, y))
    return out


def gradient() -> Derivation:
    r"""Derive :math:`\partial L/\partial z_i = p_i \sum_j y_j - y_i` by the chain rule (seed 004).

    Then :math:`p_i - y_i` once :math:`\sum_j y_j = 1`, and the log-sum-exp form of seed 002.
    """
    out = Derivation("gradient", "Cross-entropy gradient in the logits", ("001", "002", "004"))
    ctx = A.context(i)
    Ls = sp.Symbol("L")
    sum_y = A.sum_of(y, A.j)
    out.say(
        "Chain rule over every probability p_j:",
        d(Ls, z[i]),
        sp.Sum(d(Ls, p[j]) * d(p[j], z[i]), (j, 1, n)),
    )
    summand = (-y[j] / p[j]) * p[j] * (A.delta(j, i) - p[i])
    chain = sp.Sum(summand, (j, 1, n))
    out.say(
        "Put in dL/dp_j = -y_j/p_j and dp_j/dz_i = p_j (delta_ji - p_i):",
        d(Ls, z[i]),
        sp.Sum(sp.Mul(-y[j] / p[j], p[j] * (A.delta(j, i) - p[i]), evaluate=False), (j, 1, n)),
    )
    out.say("The p_j cancel:", d(Ls, z[i]), chain)
    at_i = summand.xreplace({j: i}).doit()
    rest = sp.collect(sp.expand(A.evaluate(chain, ctx) - at_i), p[i])
    out.say(
        "Split off the term j = i; for j != i, delta_ji = 0:",
        d(Ls, z[i]),
        sp.Add(at_i, rest, evaluate=False),
    )
    closed = p[i] * A.sum_of(y) - y[i]
    raw = sp.diff(loss_in_logits(), z[i])
    proof = prove("dL/dz_i = p_i sum(y) - y_i", raw, closed, ctx)
    out.say("The y_i p_i terms join the sum:", d(Ls, z[i]), closed, proof)
    chain_proof = prove("chain rule = direct derivative of L(z)", raw, A.evaluate(chain, ctx), ctx)
    out.say("sympy's direct derivative of L(z) gives the same:", None, None, chain_proof)
    one_hot = closed.xreplace({A.sum_of(y): 1})
    out.say(
        "Targets that sum to one, sum_j y_j = 1 (one-hot labels, distributions):",
        sum_y,
        sp.Integer(1),
    )
    residual = sp.factor(closed - (p[i] - y[i]))
    out.say(
        "The residual against p_i - y_i vanishes exactly when sum(y) = 1:",
        (closed - (p[i] - y[i])),
        residual,
    )
    out.say(
        "",
        None,
        None,
        prove(
            "dL/dz_i = (p_i - y_i) + p_i (sum(y) - 1)",
            raw,
            p[i] - y[i] + p[i] * (A.sum_of(y) - 1),
            ctx,
        ),
    )
    sub = prove(
        "dL/dz_i = p_i - y_i given sum(y) = 1",
        A.sum_to_one(A.evaluate(raw, ctx)),
        one_hot,
        ctx,
        check=False,
    )
    out.say("So:", d(Ls, z[i]), one_hot, sub)
    out.rejected += [
        prove("dL/dz_i = p_i - y_i without sum(y) = 1", raw, p[i] - y[i], ctx),
        prove("dL/dz_i = y_i - p_i sum(y) (sign flipped)", raw, -closed, ctx),
    ]
    out.formula("ce_gradient", closed, (i,), (p, y))
    out.formula("ce_gradient_sum1", one_hot, (i,), (p, y))
    return out


def logsumexp_form() -> Derivation:
    r"""Derive :math:`L = -z_c + \log \sum_k e^{z_k}` for a label :math:`c` and its gradient.

    Seed 002: the gradient :math:`-\mathbb{1}(i = c) + p_i` needs no softmax in the loss.
    """
    out = Derivation("logsumexp", "Log-sum-exp form of the loss", ("002",))
    c = A.c
    Ls = sp.Symbol("L")
    ce = loss_in_logits().xreplace({y[k]: A.delta(k, c)})
    out.say("One-hot target of the integer label c: y_k = delta_kc:", Ls, ce)
    out.say("Only the term k = c is left:", Ls, -sp.log(sp.exp(z[c]) / A.normaliser(k)))
    lse_form = -z[c] + sp.log(A.normaliser(k))
    proof = prove(
        "-log p_c = -z_c + log sum_k e^{z_k}", ce, -z[c] + A.lse, A.context(c), to_p=A.lse_form
    )
    out.say("log(e^{z_c}/sum) = z_c - log sum:", Ls, lse_form, proof)
    raw = sp.diff(lse_form, z[i])
    out.say("Differentiate the two terms:", d(Ls, z[i]), raw)
    closed = p[i] - A.delta(i, c)
    grad = prove("dL/dz_i = p_i - [i = c]", raw, closed, A.context(i, c))
    out.say("The log-sum-exp term gives the softmax:", d(Ls, z[i]), closed, grad)
    out.rejected.append(
        prove("log-sum-exp loss with +z_c", ce, z[c] + A.lse, A.context(c), to_p=A.lse_form)
    )
    out.formula("lse_loss", -sp.Sum(A.e[k] * z[k], (k, 1, n)) + A.lse, (), (A.e, z, A.lse))
    out.formula("lse_gradient", p[i] - A.e[i], (i,), (p, A.e))
    return out


def hessian() -> Derivation:
    r"""Derive the Hessian of the loss in the logits.

    .. math::

      \partial^2 L / \partial z_i \partial z_j
        = \sum_k y_k (\operatorname{diag}(p) - p p^T)_{ij}
    """
    out = Derivation("hessian", "Hessian of the loss in the logits", ("004",), "Extends")
    ctx = A.context(i, j)
    Ls = sp.Symbol("L")
    grad_j = sp.exp(z[j]) / A.normaliser() * A.sum_of(y) - y[j]
    out.say("Start from the gradient, written in the logits:", d(Ls, z[j]), grad_j)
    raw = sp.diff(sp.diff(loss_in_logits(), z[j]), z[i])
    out.say(
        "y does not depend on z; sum(y) is a constant factor of the softmax Jacobian:",
        d(Ls, z[i], z[j]),
        A.sum_of(y) * d(p[j], z[i]),
    )
    closed = A.sum_of(y) * p[i] * (A.delta(i, j) - p[j])
    proof = prove("d2L/dz_i dz_j = sum(y) p_i (delta_ij - p_j)", raw, closed, ctx)
    out.say("So H = sum(y) (diag(p) - p p^T):", d(Ls, z[i], z[j]), closed, proof)
    out.rejected.append(
        prove("Hessian diag(p) - p p^T without sum(y)", raw, p[i] * (A.delta(i, j) - p[j]), ctx)
    )
    out.formula("ce_hessian", closed, (i, j), (p, y))
    return out
