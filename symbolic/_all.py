r"""Every derivation, in the order the script prints them."""

from __future__ import annotations

from symbolic._cross_entropy import grad_p, gradient, hessian, logsumexp_form
from symbolic._derivation import Derivation
from symbolic._matrices import matrices
from symbolic._options import options
from symbolic._regression import regression
from symbolic._sigmoid import sigmoid_derivations
from symbolic._softmax import jacobian, shift_invariance

DERIVATIONS = (
    jacobian,
    grad_p,
    gradient,
    logsumexp_form,
    hessian,
    sigmoid_derivations,
    regression,
    shift_invariance,
    options,
    matrices,
)


def derive_all() -> list[Derivation]:
    """Run every derivation (a few seconds); each carries its proofs and refuted claims."""
    return [derive() for derive in DERIVATIONS]
