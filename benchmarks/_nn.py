"""Speed of jaxsce's softmax, log_softmax and logsumexp against ``jax.nn``.

For each size (N, V), dtype and function, both libraries are compiled two
ways under ``jax.jit``: ``fwd``, the function itself, and ``fwd+bwd``,
``jax.value_and_grad`` of ``sum(f(x) * c)`` for fixed random weights ``c``
(accumulated in float32), so that the gradient is a full one. The timed calls
are interleaved in one process; every round's times are kept.
"""

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import jaxsce
from benchmarks import _speed, _timing

FUNCTIONS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "softmax": (jaxsce.softmax, jax.nn.softmax),
    "log_softmax": (jaxsce.log_softmax, jax.nn.log_softmax),
    "logsumexp": (jaxsce.logsumexp, lambda x: jax.nn.logsumexp(x, axis=-1)),
}
LIBRARIES = ("jaxsce", "jax.nn")


@dataclasses.dataclass
class NNRow:
    """One library's times (seconds) for one function, size and dtype."""

    function: str
    n: int
    v: int
    dtype: str
    library: str
    fwd: float = 0.0
    fwd_bwd: float = 0.0
    fwd_samples: list[float] = dataclasses.field(default_factory=list)
    fwd_bwd_samples: list[float] = dataclasses.field(default_factory=list)
    bytes_fwd: float | None = None
    bytes_fwd_bwd: float | None = None


def _weighted_sum(f: Callable[..., Any]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    # `c` is an argument, not a constant closed over: XLA would constant-fold it.
    def g(x: jax.Array, c: jax.Array) -> jax.Array:
        return jnp.sum(f(x).astype(jnp.float32) * c)

    return g


def measure(n: int, v: int, dtype: str, repeats: int, warmup: int = 2) -> list[NNRow]:
    """Rows for every function and library at size (n, v) and ``dtype``."""
    x, _ = _speed.make_inputs(n, v, _speed.DTYPES[dtype])
    key = jax.random.key(1)
    weights = {
        "softmax": jax.random.normal(key, (n, v)),
        "log_softmax": jax.random.normal(key, (n, v)),
        "logsumexp": jax.random.normal(key, (n,)),
    }
    fns: dict[str, Callable[[], Any]] = {}
    rows: dict[str, NNRow] = {}
    for name, pair in FUNCTIONS.items():
        for library, f in zip(LIBRARIES, pair):
            fwd = jax.jit(f)
            fwd_bwd = jax.jit(jax.value_and_grad(_weighted_sum(f)))
            c = weights[name]
            key_ = f"{name}|{library}"
            fns[f"{key_}|fwd"] = lambda fwd=fwd: fwd(x)
            fns[f"{key_}|fwd_bwd"] = lambda fwd_bwd=fwd_bwd, c=c: fwd_bwd(x, c)
            rows[key_] = NNRow(
                name,
                n,
                v,
                dtype,
                library,
                bytes_fwd=_timing.bytes_per_element(fwd, x, elements=n * v),
                bytes_fwd_bwd=_timing.bytes_per_element(fwd_bwd, x, c, elements=n * v),
            )
    samples = _timing.interleaved_samples(fns, repeats=repeats, warmup=warmup)
    for key_kind, seconds in samples.items():
        name, library, kind = key_kind.split("|")
        row = rows[f"{name}|{library}"]
        setattr(row, kind, statistics.median(seconds))
        setattr(row, f"{kind}_samples", seconds)
    return list(rows.values())
