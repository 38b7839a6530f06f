"""Speed and memory of integer-label cross-entropy, forward and forward+backward.

For each size (N, V) and dtype, every library's mean loss is compiled three
ways, all under ``jax.jit``:

* ``fwd``: the mean loss;
* ``fwd+bwd``: ``jax.value_and_grad`` of the mean loss;
* ``fwd+bwd donated``: the same with the logits buffer donated
  (``donate_argnums=0``), so the gradient may be written over the logits
  (its memory always; its time with ``donated=True``).

The timed calls of all libraries are interleaved in one process, and every
round's times are kept, so that the ratio of two libraries can be taken round
by round. A donated buffer cannot be used twice, so the donated variant is
timed as a chain: each call's gradient (same shape and dtype as the logits) is
the next call's logits. PyTorch's ``cross_entropy`` is timed beside them where
installed. XLA's bytes accessed per logit (``cost_analysis``) come with each.
"""

import dataclasses
import functools
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _libs, _timing

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class SpeedRow:
    """Measurements of one library at one size and dtype (times in seconds)."""

    n: int
    v: int
    dtype: str
    library: str
    fwd: float
    fwd_bwd: float
    fwd_bwd_donated: float | None = None
    fwd_samples: list[float] = dataclasses.field(default_factory=list)
    fwd_bwd_samples: list[float] = dataclasses.field(default_factory=list)
    fwd_bwd_donated_samples: list[float] = dataclasses.field(default_factory=list)
    bytes_fwd: float | None = None
    bytes_fwd_bwd: float | None = None
    temp_fwd_bwd: int | None = None
    temp_fwd_bwd_donated: int | None = None
    footprint_fwd_bwd: int | None = None
    footprint_fwd_bwd_donated: int | None = None
    residuals: int | None = None
    residuals_beyond_inputs: int | None = None


def make_inputs(n: int, v: int, dtype: Any, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Standard-normal logits of shape (n, v) in ``dtype`` and uniform labels (n,)."""
    key_logits, key_labels = jax.random.split(jax.random.key(seed))
    logits = jax.random.normal(key_logits, (n, v), jnp.float32).astype(dtype)
    labels = jax.random.randint(key_labels, (n,), 0, v)
    return logits, labels


def mean_loss(loss: _libs.Loss) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The batch mean of ``loss``, accumulated in float32 whatever the logits' dtype."""

    def f(logits: jax.Array, labels: jax.Array) -> jax.Array:
        return jnp.mean(loss(logits, labels).astype(jnp.float32))

    return f


class _DonatedChain:
    """Calls a donating ``value_and_grad`` with the previous call's gradient as logits."""

    def __init__(self, fn: Callable[..., Any], logits: jax.Array, labels: jax.Array):
        self.fn, self.logits, self.labels = fn, jnp.copy(logits), labels

    def __call__(self) -> jax.Array:
        _, self.logits = self.fn(self.logits, self.labels)
        return self.logits


def _torch_callables(
    logits: jax.Array, labels: jax.Array, dtype: str
) -> dict[str, Callable[[], None]]:
    """PyTorch's forward and forward+backward on copies of the same inputs."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(logits.astype(jnp.float32))).to(getattr(torch, dtype))
    y = torch.from_numpy(np.array(labels)).long()

    def fwd() -> None:
        with torch.no_grad():
            F.cross_entropy(x, y)

    def fwd_bwd() -> None:
        xg = x.detach().requires_grad_()
        loss = F.cross_entropy(xg, y)
        torch.autograd.grad(loss, xg)

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def measure(
    n: int,
    v: int,
    dtype: str,
    repeats: int,
    warmup: int = 2,
    with_torch: bool = True,
    donated: bool = False,
) -> list[SpeedRow]:
    """One row per library at size (n, v) and ``dtype``; see the module docstring."""
    logits, labels = make_inputs(n, v, DTYPES[dtype])
    fns: dict[str, Callable[[], Any]] = {}
    rows: dict[str, SpeedRow] = {}
    for name, loss in _libs.jax_losses().items():
        f = mean_loss(loss)
        fwd = jax.jit(f)
        fwd_bwd = jax.jit(jax.value_and_grad(f))
        donating = jax.jit(jax.value_and_grad(f), donate_argnums=0)
        fns[f"{name}|fwd"] = lambda fwd=fwd: fwd(logits, labels)
        fns[f"{name}|fwd_bwd"] = lambda fwd_bwd=fwd_bwd: fwd_bwd(logits, labels)
        if donated:
            fns[f"{name}|fwd_bwd_donated"] = _DonatedChain(donating, logits, labels)
        of_logits = functools.partial(lambda x, f: f(x, labels), f=f)
        rows[name] = SpeedRow(
            n,
            v,
            dtype,
            name,
            0.0,
            0.0,
            temp_fwd_bwd=_timing.temp_bytes(fwd_bwd, logits, labels),
            temp_fwd_bwd_donated=_timing.temp_bytes(donating, logits, labels),
            footprint_fwd_bwd=_timing.footprint_bytes(fwd_bwd, logits, labels),
            footprint_fwd_bwd_donated=_timing.footprint_bytes(donating, logits, labels),
            residuals=_timing.residual_bytes(of_logits, logits),
            residuals_beyond_inputs=_timing.residual_bytes(of_logits, logits, exclude_inputs=True),
            bytes_fwd=_timing.bytes_per_element(fwd, logits, labels, elements=n * v),
            bytes_fwd_bwd=_timing.bytes_per_element(fwd_bwd, logits, labels, elements=n * v),
        )
    if with_torch and _libs.torch_version() is not None:
        for kind, fn in _torch_callables(logits, labels, dtype).items():
            fns[f"PyTorch|{kind}"] = fn
        rows["PyTorch"] = SpeedRow(n, v, dtype, "PyTorch", 0.0, 0.0)
    samples = _timing.interleaved_samples(fns, repeats=repeats, warmup=warmup)
    for key, seconds in samples.items():
        name, kind = key.split("|")
        setattr(rows[name], kind, statistics.median(seconds))
        setattr(rows[name], f"{kind}_samples", seconds)
    return list(rows.values())
