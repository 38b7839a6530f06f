"""The libraries under comparison, behind one per-example loss signature.

Every JAX candidate is a function ``loss(logits, labels) -> per-example loss``
with integer labels. PyTorch is an outside reference and is optional.
"""

from collections.abc import Callable

import jax
import optax

import jaxsce

Loss = Callable[[jax.Array, jax.Array], jax.Array]


def jaxsce_loss() -> tuple[str, Loss]:
    """jaxsce's integer-label cross-entropy and its label."""
    return "jaxsce", jaxsce.softmax_cross_entropy_with_integer_labels


def jax_losses() -> dict[str, Loss]:
    """name -> loss for the JAX libraries, jaxsce first, then optax."""
    name, loss = jaxsce_loss()
    return {name: loss, "optax": optax.softmax_cross_entropy_with_integer_labels}


def torch_version() -> str | None:
    """PyTorch's version, or None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)
