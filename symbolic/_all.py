r"""Every derivation, in the order the script prints them."""

from __future__ import annotations

from symbolic._cross_entropy import grad_p, gradient, hessian, logsumexp_form
from symbolic._derivation import Derivation
from symbolic._entropy import entropy
from symbolic._matrices import matrices
from symbolic._merge import online_merge, shards
from symbolic._normaliser import fused_backward, normaliser
from symbolic._options import options
from symbolic._regression import regression
from symbolic._scaling import scaling
from symbolic._sigmoid import sigmoid_derivations
from symbolic._softcap import softcap
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
    entropy,
    options,
    # What the library computes: its rearrangements of the identities above.
    normaliser,
    fused_backward,
    online_merge,
    shards,
    softcap,
    scaling,
    matrices,
)


def derive_all() -> list[Derivation]:
    """Run every derivation (a few seconds); each carries its proofs and refuted claims."""
    return [derive() for derive in DERIVATIONS]
