"""Run the benchmarks: ``python -m benchmarks [--quick]``.

Measures, in one process, jaxsce against optax (and PyTorch where installed):
speed of integer-label cross-entropy forward and forward+backward, XLA memory
and residuals, and accuracy in ulp against mpmath. Writes ``results.md``,
``results.json`` and ``benchmark.png`` into the output folder.
"""

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _accuracy, _libs, _report, _speed, large_vocab

FULL_SIZES = [
    (256, 1000),
    (2048, 1000),
    (2048, 8192),
    (2048, 32768),
    (8192, 32768),
    (2048, 131072),
    (8192, 131072),
]
QUICK_SIZES = [(256, 1000), (2048, 8192), (2048, 32768)]
QUICK_MAX_BF16 = 2048 * 8192  # quick mode times bfloat16 only up to this many logits
DEFAULT_OUT = Path(__file__).parent / "results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 min)")
    parser.add_argument("--sizes", help="comma-separated NxV, e.g. 256x1000,2048x32768")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 3 quick, 5 full)")
    parser.add_argument(
        "--max-gib", type=float, default=6.0, help="skip sizes whose four N x V buffers exceed this"
    )
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--no-large-vocab", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    return parser.parse_args(argv)


def sizes_to_run(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.sizes:
        return [tuple(int(p) for p in s.split("x")) for s in args.sizes.split(",")]  # type: ignore[misc]
    return QUICK_SIZES if args.quick else FULL_SIZES


def large_vocab_section(quick: bool) -> str | None:
    """Markdown of the fused linear cross-entropy benchmark, ``benchmarks.large_vocab``.

    The full mode runs it here (several minutes); the quick mode takes the
    table its last run wrote (``results/large_vocab.md``), if there is one.
    """
    if not quick:
        return large_vocab.run()[1]
    path = Path(large_vocab.RESULTS)
    if not path.exists():
        return None
    body = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("# "))
    return "From its last run, not run by this command.\n\n" + body.strip()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, write the results folder, and return what was measured."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    start = time.perf_counter()
    repeats = args.repeats or (3 if args.quick else 5)
    with_torch = not args.no_torch and _libs.torch_version() is not None
    dtypes = args.dtypes.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    info = _report.machine()
    print("  ".join(f"{k}: {v}" for k, v in info.items()))

    speed, skipped = [], []
    for n, v in sizes_to_run(args):
        for dtype in dtypes:
            itemsize = np.dtype(_speed.DTYPES[dtype]).itemsize
            if 4 * n * v * itemsize > args.max_gib * 2**30:
                skipped.append(f"{n}x{v} {dtype}")
                continue
            if args.quick and not args.sizes and dtype == "bfloat16" and n * v > QUICK_MAX_BF16:
                continue
            rows = _speed.measure(n, v, dtype, repeats=repeats, with_torch=with_torch)
            speed += rows
            cells = ", ".join(f"{r.library} {_report.ms(r.fwd_bwd)} ms" for r in rows)
            print(f"N={n:5d} V={v:6d} {dtype:8s} fwd+bwd: {cells}", flush=True)

    margins = np.linspace(0, 40, 11 if args.quick else 81)
    accuracy = [] if args.no_accuracy else _accuracy.measure(margins, with_torch=with_torch)
    large_vocab = None if args.no_large_vocab else large_vocab_section(args.quick)

    headline = _report.headline(speed)
    command = " ".join(["python -m benchmarks", *argv])
    info["load average (end)"] = _report.load_average()
    parts = [
        "# jaxsce benchmarks",
        f"Command: `{command}`, {repeats} interleaved timed rounds after 2 warm-up "
        "calls, medians in milliseconds. Ratios below 1 mean jaxsce is faster or smaller.",
        _report.table(["", ""], list(info.items())),
        f"**Headline:** {headline}",
        "## Speed\n\n" + _report.speed_tables(speed),
        "## Memory\n\nFrom XLA's `compile().memory_analysis()` of `jit(value_and_grad(mean "
        "loss))`: *temp* is temporary buffers, *live* is arguments + outputs + temp - aliased "
        "(with donation the gradient may reuse the logits buffer). *Residuals* are the array "
        "leaves of the function `jax.vjp` returns; in brackets, those that are not the "
        "input logits themselves.\n\n" + _report.memory_table(speed),
    ]
    if skipped:
        parts.append(f"Skipped (over --max-gib {args.max_gib}): {', '.join(skipped)}.")
    if accuracy:
        parts.append(
            "## Accuracy\n\nLargest error in ulp (float32) against mpmath at "
            f"{_accuracy.DIGITS} digits, {len(margins)} rows of {_accuracy.CLASSES} standard-"
            "normal logits with the label logit a margin of 0..40 above the largest other "
            "(confident predictions). Per-example loss and the gradient of its sum.\n\n"
            + _report.accuracy_table(accuracy, list(margins))
        )
    if large_vocab:
        parts.append("## Fused linear cross-entropy (large vocabulary)\n\n" + large_vocab)
    parts.append("![time and memory against V](benchmark.png)")
    (args.out / "results.md").write_text("\n\n".join(parts) + "\n")
    if speed:
        _report.plot(speed, args.out / "benchmark.png")
    results = {
        "machine": info,
        "command": command,
        "headline": headline,
        "speed": [dataclasses.asdict(r) for r in speed],
        "accuracy": [dataclasses.asdict(r) for r in accuracy],
        "skipped": skipped,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(
        f"\n{headline}\nwrote {args.out}/results.md, benchmark.png "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return results


if __name__ == "__main__":
    main()
