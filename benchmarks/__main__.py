"""Run the benchmarks: ``python -m benchmarks [--quick] [--out DIR] [--update-docs]``.

Measures, in one process, jaxsce against optax (and PyTorch where installed):
speed of integer-label cross-entropy forward and forward+backward with XLA's
bytes accessed per logit, XLA memory and residuals, accuracy in ulp against
mpmath; and jaxsce's softmax, log_softmax and logsumexp against ``jax.nn``.
Writes ``results.md``, ``results.json`` and ``benchmark.png`` into ``--out``
(default ``benchmarks/out/``, which git ignores). Only ``--update-docs``
writes the committed copy in ``benchmarks/results/`` that README shows.
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

from benchmarks import _accuracy, _libs, _nn, _report, _speed, large_vocab

CLASSIFICATION = [(n, v) for n in (256, 8192) for v in (10, 100, 1000)]
FULL_SIZES = [*CLASSIFICATION, (2048, 1000), (2048, 8192), (2048, 32768)]
LARGE_SIZES = [(8192, 32768), (2048, 131072), (8192, 131072)]  # with --large
QUICK_SIZES = [(256, 10), (256, 1000), (2048, 8192)]
NN_SIZES = [(256, 10), (256, 1000), (8192, 10), (8192, 100), (8192, 1000)]
QUICK_NN_SIZES = [(256, 10), (2048, 1000)]
QUICK_MAX_BF16 = 2048 * 8192  # quick mode times bfloat16 only up to this many logits
DEFAULT_OUT = Path(__file__).parent / "out"  # ignored by git
DOCS_OUT = Path(__file__).parent / "results"  # committed; README shows it


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 min)")
    parser.add_argument("--sizes", help="comma-separated NxV, e.g. 256x1000,2048x32768")
    parser.add_argument(
        "--large", action="store_true", help="also the largest sizes (several minutes more)"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--repeats", type=int, help="timed rounds (default 3 quick, 7 full; 3x up to 2^23 logits)"
    )
    parser.add_argument(
        "--donated", action="store_true", help="also time forward+backward with donated logits"
    )
    parser.add_argument("--no-nn", action="store_true", help="leave out the jax.nn comparison")
    parser.add_argument(
        "--max-gib", type=float, default=6.0, help="skip sizes whose four N x V buffers exceed this"
    )
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument(
        "--large-vocab",
        action="store_true",
        help="run benchmarks.large_vocab too (several minutes); otherwise its last table is shown",
    )
    parser.add_argument("--no-large-vocab", action="store_true", help="leave its table out")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"write the committed results README shows ({DOCS_OUT}) instead of --out",
    )
    return parser.parse_args(argv)


def sizes_to_run(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.sizes:
        return [tuple(int(p) for p in s.split("x")) for s in args.sizes.split(",")]  # type: ignore[misc]
    if args.quick:
        return QUICK_SIZES
    return FULL_SIZES + (LARGE_SIZES if args.large else [])


def large_vocab_section(run: bool) -> str | None:
    """Markdown of the fused linear cross-entropy benchmark, ``benchmarks.large_vocab``.

    With ``run`` it runs here (several minutes); otherwise the table its last
    run wrote (``results/large_vocab.md``) is shown, if there is one.
    """
    if run:
        return large_vocab.run()[1]
    path = Path(large_vocab.RESULTS)
    if not path.exists():
        return None
    body = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("# "))
    return "From its last run, not run by this command.\n\n" + body.strip()


SMALL = 2**23  # logits: sizes up to this many get SMALL_ROUNDS times the rounds
SMALL_ROUNDS = 3


def rounds(repeats: int, n: int, v: int) -> int:
    """Timed rounds at size (n, v): calls of at most a few ms get more.

    They are the noisiest (bimodal on this 2-core machine: at 2048 x 1000 and
    8192 x 1000 a median of 7 rounds flipped between runs), and cheap.
    """
    return repeats * SMALL_ROUNDS if n * v <= SMALL else repeats


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, write the results folder, and return what was measured."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    start = time.perf_counter()
    repeats = args.repeats or (3 if args.quick else 7)
    with_torch = not args.no_torch and _libs.torch_version() is not None
    dtypes = args.dtypes.split(",")
    out = DOCS_OUT if args.update_docs else args.out
    out.mkdir(parents=True, exist_ok=True)
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
            rows = _speed.measure(
                n,
                v,
                dtype,
                repeats=rounds(repeats, n, v),
                with_torch=with_torch,
                donated=args.donated,
            )
            speed += rows
            cells = ", ".join(f"{r.library} {_report.ms(r.fwd_bwd)} ms" for r in rows)
            ratios = ", ".join(
                f"{kind} {_report.ratio(rows, (n, v, dtype), kind):.2f}x"
                for kind in ("fwd", "fwd_bwd")
            )
            print(f"N={n:5d} V={v:6d} {dtype:8s} fwd+bwd: {cells}; {ratios}", flush=True)

    nn: list[_nn.NNRow] = []
    if not args.no_nn:
        for n, v in QUICK_NN_SIZES if args.quick else NN_SIZES:
            for dtype in dtypes:
                rows_nn = _nn.measure(n, v, dtype, repeats=rounds(repeats, n, v))
                nn += rows_nn
                print(f"jax.nn N={n:5d} V={v:6d} {dtype:8s} done", flush=True)

    margins = np.linspace(0, 40, 11 if args.quick else 81)
    accuracy = [] if args.no_accuracy else _accuracy.measure(margins, with_torch=with_torch)
    softmax_accuracy = [] if args.no_accuracy else _accuracy.measure_softmax(margins)
    large_vocab = None if args.no_large_vocab else large_vocab_section(args.large_vocab)

    headline = _report.headline(speed)
    targets = "\n".join(
        t
        for t in (
            _report.target_summary(_report.ce_ratios(speed), "cross-entropy vs optax"),
            _report.target_summary(
                _report.nn_ratios(nn), "softmax/log_softmax/logsumexp vs jax.nn"
            ),
        )
        if t
    )
    command = " ".join(["python -m benchmarks", *argv])
    info["load average (end)"] = _report.load_average()
    parts = [
        "# jaxsce benchmarks",
        f"Command: `{command}`, {repeats} interleaved timed rounds after 2 warm-up calls"
        f" ({rounds(repeats, 1, 1)} at sizes up to 2^23 logits), medians in milliseconds."
        " Ratios below 1 mean jaxsce is faster or smaller.",
        _report.table(["", ""], list(info.items())),
        f"**Headline:** {headline}",
        "**Against issue 10's targets** (ratios of medians over every row below):\n\n" + targets,
        "## Speed\n\nRatios are those of the medians; in brackets, the smallest and largest "
        "ratio within one round. *bytes/logit* is XLA's `cost_analysis()` bytes accessed per "
        "logit (the floor: 4 for one float32 read in the forward pass; 12 for two reads and a "
        "write in forward + backward).\n\n" + _report.speed_tables(speed),
        "## Memory\n\nFrom XLA's `compile().memory_analysis()` of `jit(value_and_grad(mean "
        "loss))`: *temp* is temporary buffers, *live* is arguments + outputs + temp - aliased "
        "(with donation the gradient may reuse the logits buffer). *Residuals* are the array "
        "leaves of the function `jax.vjp` returns; in brackets, those that are not the "
        "input logits themselves.\n\n" + _report.memory_table(speed),
    ]
    if nn:
        parts.append(
            "## softmax, log_softmax, logsumexp against jax.nn\n\n`fwd`: the function; "
            "`fwd+bwd`: `jax.value_and_grad` of `sum(f(x) * c)` for fixed random `c`.\n\n"
            + _report.nn_tables(nn)
        )
    if skipped:
        parts.append(f"Skipped (over --max-gib {args.max_gib}): {', '.join(skipped)}.")
    if accuracy:
        parts.append(
            "## Accuracy\n\nLargest error in ulp (float32) against mpmath at "
            f"{_accuracy.DIGITS} digits, {len(margins)} rows of {_accuracy.CLASSES} standard-"
            "normal logits with the label logit a margin of 0..40 above the largest other "
            "(confident predictions). Per-example loss and the gradient of its sum.\n\n"
            + _report.accuracy_table(accuracy, list(margins))
            + "\n\n`softmax` of the same rows, every entry:\n\n"
            + _report.softmax_accuracy_table(softmax_accuracy)
        )
    if large_vocab:
        parts.append("## Fused linear cross-entropy (large vocabulary)\n\n" + large_vocab)
    parts.append("![time and memory against V](benchmark.png)")
    (out / "results.md").write_text("\n\n".join(parts) + "\n")
    if speed:
        _report.plot(speed, out / "benchmark.png")
    results = {
        "machine": info,
        "command": command,
        "headline": headline,
        "targets": targets,
        "speed": [dataclasses.asdict(r) for r in speed],
        "nn": [dataclasses.asdict(r) for r in nn],
        "accuracy": [dataclasses.asdict(r) for r in accuracy],
        "softmax_accuracy": [dataclasses.asdict(r) for r in softmax_accuracy],
        "skipped": skipped,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(
        f"\n{headline}\n{targets}\nwrote {out}/results.md, benchmark.png "
        f"in {time.perf_counter() - start:.0f} s"
    )
    return results


if __name__ == "__main__":
    main()
