"""symbolic: the maths of jaxsce derived and proven by sympy, and bridged to JAX."""

try:
    import sympy  # noqa: F401
except ImportError as error:  # the library needs only jax; this module needs the extra
    raise ImportError(
        'symbolic needs sympy: install it with pip install -e ".[symbolic]"'
    ) from error

from symbolic._all import derive_all as derive_all
from symbolic._bridge import jax_function as jax_function
from symbolic._derivation import Derivation as Derivation
from symbolic._derivation import Formula as Formula
from symbolic._derivation import Step as Step
from symbolic._prover import Proof as Proof
from symbolic._prover import prove as prove
