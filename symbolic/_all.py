r"""Every derivation, in the order the script prints them."""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import sys
from collections.abc import Callable

import sympy as sp

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


def cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/jaxsce-symbolic`` (``~/.cache/jaxsce-symbolic`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "jaxsce-symbolic"


def _cache_file() -> pathlib.Path:
    """Where the derivations of this exact source (and sympy version) are kept."""
    digest = hashlib.sha256(f"{sys.version}|{sp.__version__}".encode())
    for source in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return cache_dir() / f"{digest.hexdigest()[:32]}.pickle"


def _derive(index: int) -> Derivation:
    dv = DERIVATIONS[index]()
    dv.prerender()
    return dv


# The derivations the textbook checks need: DERIVATIONS[:TEXTBOOK] (the rest are the
# library's algorithms).
TEXTBOOK = DERIVATIONS.index(options) + 1


def derive_all(
    cache: bool = False,
    processes: int = 1,
    progress: Callable[[list[Derivation]], None] | None = None,
) -> list[Derivation]:
    """Run every derivation (several seconds); each carries its proofs and refuted claims.

    Args:
      cache: reuse the derivations of an earlier run of the same source files (keyed by
        their SHA-256, the Python and the sympy version), and store them after a fresh run.
      processes: derive in this many forked worker processes (sympy is single-threaded).
        Only for a process that has not started JAX's backends: forking a running JAX
        runtime can deadlock.
      progress: called with the derivations so far, in order, after each new one (not
        when they come from the cache).
    """
    path = _cache_file() if cache else None
    if path is not None and path.exists():
        try:
            with path.open("rb") as f:
                return pickle.load(f)
        except Exception:  # a damaged or incompatible cache is re-derived
            pass
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(processes) as pool:
            out = []
            for dv in pool.imap(_derive, range(len(DERIVATIONS))):
                out.append(dv)
                if progress is not None:
                    progress(out)
    else:
        out = []
        for index in range(len(DERIVATIONS)):
            out.append(_derive(index))
            if progress is not None:
                progress(out)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with tmp.open("wb") as f:
                pickle.dump(out, f)
            tmp.replace(path)
        except OSError:  # a read-only home: no cache
            pass
    return out
