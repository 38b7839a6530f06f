r"""Why the accurate cross-entropy is slow on XLA CPU, and a formulation that is not.

``python -m benchmarks.formulations [--n 2048 --v 32768]`` times, in one
process, the pieces of the forward pass and the whole loss (forward, and
forward+backward) of optax and jaxsce, and prints the ulp accuracy of each
against mpmath.

What it shows (see the project report for numbers):

* XLA's CPU row reduction is fast for a plain ``sum(exp(z - m))`` but several
  times slower as soon as its body carries a ``select`` (``jnp.where``), a
  comparison or a second output: excluding the largest class by
  ``where(z == m, ...)``, counting ties by ``sum(z == m)`` or guarding the
  TwoSum correction with ``where(isfinite(d), r, 0)`` each cost more than the
  whole plain reduction.
* The accurate sum over the classes other than the largest only needs the
  exclusion in the one block of classes that holds the largest: with block
  sums from ``lax.reduce_window`` (plain bodies, padding virtual), the
  exclusion, the tie count and the exact arithmetic run on one block. This is
  what ``jaxsce._logsumexp.max_and_rest`` does (the last row of the table).
* The TwoSum-compensated ``exp(z - m)`` needs no select when ``-inf`` is
  clamped away (``max(z, m - 200)``).
* The backward pass is bound by writing the fresh ``N x V`` gradient; its
  compensated exponential costs nothing there, but a reduction over the
  one-hot targets (``sum(y)``, which is 1 for integer labels) does.

"""

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _accuracy, _libs, _speed, _timing
from jaxsce._logsumexp import exp_shifted, max_and_rest

BLOCK = 1024


def forward_pieces(z: jax.Array) -> dict[str, jax.Array]:
    """Jitted row reductions of ``z``, from plain to the ones XLA CPU runs slowly."""
    m = jnp.max(z, axis=-1, keepdims=True)
    top = z == m
    d = z - m
    z_part = d + m
    r = (z - z_part) + ((z_part - d) - m)
    return {
        "max": jnp.max(z, axis=-1),
        "sum exp(z - m)": jnp.sum(jnp.exp(z - m), axis=-1),
        "sum where(top, 0, exp)": jnp.sum(jnp.where(top, 0.0, jnp.exp(z - m)), axis=-1),
        "sum(z == m) (tie count)": jnp.sum(top, axis=-1),
        "sum TwoSum exp, isfinite select": jnp.sum(
            jnp.exp(d) * (1 + jnp.where(jnp.isfinite(d), r, 0.0)), axis=-1
        ),
        "sum TwoSum exp, clamp": jnp.sum(exp_shifted(z, m), axis=-1),
        "blocked rest (jaxsce)": max_and_rest(z).rest,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--v", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    logits, labels = _speed.make_inputs(args.n, args.v, jnp.float32)

    names = list(forward_pieces(logits[:1]))
    pieces = {name: jax.jit(lambda z, name=name: forward_pieces(z)[name]) for name in names}
    medians = _timing.interleaved_medians(
        {name: (lambda f=f: f(logits)) for name, f in pieces.items()}, args.repeats
    )
    print(f"Forward row reductions, N={args.n}, V={args.v}, float32 (median ms):")
    for name, seconds in medians.items():
        print(f"  {name:34s} {seconds * 1e3:8.1f}")

    losses = {
        "optax": optax.softmax_cross_entropy_with_integer_labels,
        "jaxsce": _libs.jaxsce_loss()[1],
    }
    calls = {}
    for name, loss in losses.items():
        fwd = jax.jit(_speed.mean_loss(loss))
        fwd_bwd = jax.jit(jax.value_and_grad(_speed.mean_loss(loss)))
        calls[f"{name}|fwd"] = lambda f=fwd: f(logits, labels)
        calls[f"{name}|fwd+bwd"] = lambda f=fwd_bwd: f(logits, labels)
    medians = _timing.interleaved_medians(calls, args.repeats)
    print("\nWhole loss (median ms, ratio to optax):")
    for name in losses:
        fwd, fwd_bwd = medians[f"{name}|fwd"], medians[f"{name}|fwd+bwd"]
        print(
            f"  {name:24s} fwd {fwd * 1e3:7.1f} ({fwd / medians['optax|fwd']:.2f}x)"
            f"   fwd+bwd {fwd_bwd * 1e3:7.1f} ({fwd_bwd / medians['optax|fwd+bwd']:.2f}x)"
        )

    print("\nAccuracy against mpmath (max ulp, 1000 classes, margins 0..40):")
    candidates = {name: _accuracy.jax_loss_and_grad(loss) for name, loss in losses.items()}
    for row in _accuracy.measure(np.linspace(0, 40, 41), candidates=candidates):
        print(
            f"  {row.library:24s} loss {row.loss:10.3g}   grad label {row.grad_label:10.3g}"
            f"   grad others {row.grad_other:6.3g}"
        )


if __name__ == "__main__":
    main()
