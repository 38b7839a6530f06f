"""Timing and memory helpers shared by the benchmark modules.

All timings are taken in one process, with every callable warmed up first and
the repeats interleaved (A, B, C, A, B, C, ...), so that slow drift of the
machine (frequency, other processes) hits every candidate alike. The median
of the repeats is reported.
"""

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

MIN_SAMPLE = 2e-3  # seconds: shorter calls are timed in batches of this length


def interleaved_samples(
    fns: dict[str, Callable[[], Any]], repeats: int = 10, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times in seconds per call of each zero-argument callable, one per round.

    Each callable is called ``warmup`` times (compilation, caches), then the
    callables are called in turn ``repeats`` times, each round starting one
    place further along (so no callable always follows the same one); every
    call is timed up to ``jax.block_until_ready`` of its result. A callable
    whose last warm-up call took under ``MIN_SAMPLE`` is called that many
    times in a row per round (each call blocked on), and the round's sample
    is the mean: a single call of tens of microseconds mostly measures the
    jitter of the machine. Entry ``i`` of every list comes from the same
    round, so ratios of two callables can be taken round by round.

    Args:
      fns: name -> zero-argument callable returning JAX arrays (or any pytree).
      repeats: number of timed rounds.
      warmup: number of untimed calls of each callable before timing.

    Returns:
      name -> list of ``repeats`` seconds per call, in the order of ``fns``.
    """
    calls = {}
    for name, fn in fns.items():
        elapsed = MIN_SAMPLE
        for _ in range(warmup):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            elapsed = time.perf_counter() - start
        calls[name] = max(1, min(1000, round(MIN_SAMPLE / max(elapsed, 1e-7))))
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(calls[name]):
                jax.block_until_ready(fns[name]())
            samples[name].append((time.perf_counter() - start) / calls[name])
    return samples


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], repeats: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Median wall time in seconds of each callable (see :func:`interleaved_samples`)."""
    samples = interleaved_samples(fns, repeats=repeats, warmup=warmup)
    return {name: statistics.median(times) for name, times in samples.items()}


def bytes_per_element(jitted_fn: Any, *args: Any, elements: int) -> float:
    """XLA's estimate of bytes accessed by one call, per element of the input.

    From ``jitted_fn.lower(*args).compile().cost_analysis()["bytes accessed"]``;
    -1 where the backend gives no cost analysis.
    """
    cost = jitted_fn.lower(*args).compile().cost_analysis()
    if not cost or "bytes accessed" not in cost:
        return -1.0
    return float(cost["bytes accessed"]) / elements


def temp_bytes(jitted_fn: Any, *args: Any) -> int:
    """Temporary buffer bytes XLA allocates for one call of a jitted function.

    Read from ``jitted_fn.lower(*args).compile().memory_analysis()``; returns
    -1 where the backend gives no memory analysis.
    """
    analysis = jitted_fn.lower(*args).compile().memory_analysis()
    if analysis is None:
        return -1
    return int(analysis.temp_size_in_bytes)


def footprint_bytes(jitted_fn: Any, *args: Any) -> int:
    """Bytes live during one call: arguments + outputs + temporaries - aliased.

    Outputs that reuse a donated argument's buffer (``alias_size_in_bytes``)
    are counted once. Returns -1 where the backend gives no memory analysis.
    """
    analysis = jitted_fn.lower(*args).compile().memory_analysis()
    if analysis is None:
        return -1
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def residual_leaves(
    fn: Callable[..., Any], *args: Any, exclude_inputs: bool = False
) -> list[jax.Array]:
    """The arrays JAX keeps for the backward pass of ``fn`` at ``args``.

    These are the array leaves of the pullback ``jax.vjp`` returns (its closure
    holds the residuals), with ``fn`` under ``jax.jit`` as in a training step:
    there an input the backward pass needs is forwarded as the very same
    buffer (run eagerly, a no-op such as ``astype`` to the same dtype would
    copy it). ``exclude_inputs=True`` leaves those out, so what remains is
    what the function allocates to keep.
    """
    _, pullback = jax.vjp(jax.jit(fn), *args)
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(pullback) if isinstance(leaf, jax.Array)]
    if not exclude_inputs:
        return leaves
    inputs = {_buffer_id(a) for a in jax.tree_util.tree_leaves(args) if isinstance(a, jax.Array)}
    return [leaf for leaf in leaves if _buffer_id(leaf) not in inputs]


def residual_bytes(fn: Callable[..., Any], *args: Any, exclude_inputs: bool = False) -> int:
    """Total bytes of :func:`residual_leaves` of ``fn`` at ``args``."""
    leaves = residual_leaves(fn, *args, exclude_inputs=exclude_inputs)
    return sum(int(leaf.nbytes) for leaf in leaves)


def _buffer_id(array: jax.Array) -> tuple[int, tuple[int, ...]]:
    """The device buffer address and shape of a single-device array."""
    return array.unsafe_buffer_pointer(), tuple(array.shape)
