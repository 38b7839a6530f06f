"""Markdown tables and the plot the benchmark writes into its results folder."""

import math
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import optax

from benchmarks import _libs
from benchmarks._accuracy import AccuracyRow, SoftmaxAccuracyRow
from benchmarks._nn import NNRow
from benchmarks._speed import SpeedRow

HEADLINE = (2048, 32768, "float32")
TARGET_RATIO = 1.25
# Issue 10's targets: no row above MAX_RATIO; geometric mean of forward +
# backward at most GEOMEAN_RATIO (stretch: 1.0).
MAX_RATIO = 1.5
GEOMEAN_RATIO = 1.1


def machine() -> dict[str, str]:
    """CPU model, core count and library versions of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "JAX device": f"{device.platform} ({device.device_kind})",
        "jax": jax.__version__,
        "optax": optax.__version__,
        "PyTorch": _libs.torch_version() or "not installed",
        "Python": platform.python_version(),
        "load average (start)": load_average(),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (other jobs on the machine skew timings)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def mib(n: int | None) -> str:
    """Bytes as MiB with one decimal (KiB below 1 MiB); '-' for unknown."""
    if n is None or n < 0:
        return "-"
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"


def ms(seconds: float | None) -> str:
    """Seconds as milliseconds with three significant digits; '-' for unknown."""
    return "-" if seconds is None else f"{seconds * 1e3:.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _by_case(rows: Sequence[SpeedRow]) -> dict[tuple[int, int, str], dict[str, SpeedRow]]:
    cases: dict[tuple[int, int, str], dict[str, SpeedRow]] = {}
    for row in rows:
        cases.setdefault((row.n, row.v, row.dtype), {})[row.library] = row
    return cases


def ratio(rows: Sequence[SpeedRow], case: tuple[int, int, str], kind: str) -> float | None:
    """Median time of jaxsce over optax's for ``kind`` at ``case``; None if not measured."""
    libs = _by_case(rows).get(case)
    if libs is None:
        return None
    ours = next(r for name, r in libs.items() if name.startswith("jaxsce"))
    theirs = getattr(libs["optax"], kind)
    return None if not theirs else getattr(ours, kind) / theirs


def spread(ours: Sequence[float], theirs: Sequence[float]) -> tuple[float, float] | None:
    """Smallest and largest ratio of two libraries' times taken in the same round."""
    ratios = [a / b for a, b in zip(ours, theirs) if b > 0]
    return (min(ratios), max(ratios)) if ratios else None


def ratio_cell(median_ratio: float | None, lo_hi: tuple[float, float] | None) -> str:
    """``**1.02** (0.95-1.10)``: the ratio of medians and the per-round range."""
    if median_ratio is None:
        return "-"
    cell = f"**{median_ratio:.2f}**"
    return cell if lo_hi is None else f"{cell} ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})"


def per_byte(value: float | None) -> str:
    return "-" if value is None or value < 0 else f"{value:.1f}"


def geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def target_summary(ratios: dict[str, list[float]], what: str) -> str:
    """One line per kind: largest ratio and geometric mean against issue 10's targets."""
    lines = []
    for kind, values in ratios.items():
        if not values:
            continue
        worst, mean = max(values), geomean(values)
        checks = [f"largest {worst:.2f}x (target <= {MAX_RATIO}x: "
                  f"{'met' if worst <= MAX_RATIO else 'NOT met'})"]
        checks.append(f"geometric mean {mean:.2f}x over {len(values)} rows")
        if kind == "fwd_bwd":
            verdict = "met" if mean <= GEOMEAN_RATIO else "NOT met"
            checks[-1] += f" (target <= {GEOMEAN_RATIO}x: {verdict})"
        label = {"fwd": "forward", "fwd_bwd": "forward + backward"}[kind]
        lines.append(f"- {what}, {label}: " + "; ".join(checks) + ".")
    return "\n".join(lines)


def ce_ratios(rows: Sequence[SpeedRow]) -> dict[str, list[float]]:
    """kind -> jaxsce / optax ratio of medians at every measured case."""
    out: dict[str, list[float]] = {"fwd": [], "fwd_bwd": []}
    for case in _by_case(rows):
        for kind in out:
            r = ratio(rows, case, kind)
            if r is not None:
                out[kind].append(r)
    return out


def headline(rows: Sequence[SpeedRow]) -> str:
    """One line: the target ratio at N=2048, V=32768 float32 forward+backward."""
    n, v, dtype = HEADLINE
    r = ratio(rows, HEADLINE, "fwd_bwd")
    if r is None:
        return f"Headline case N={n}, V={v} {dtype} was not measured in this run."
    verdict = "met" if r <= TARGET_RATIO else "NOT met"
    rd = ratio(rows, HEADLINE, "fwd_bwd_donated")
    donated = "" if rd is None else f"; with logits donated: {rd:.2f}x"
    return (
        f"forward+backward N={n}, V={v} {dtype}: jaxsce / optax = {r:.2f}x "
        f"(target <= {TARGET_RATIO}x: {verdict}){donated}"
    )


def speed_tables(rows: Sequence[SpeedRow]) -> str:
    """Median times in ms, one table per operation, with the jaxsce / optax ratio.

    The ratio is that of the medians; in brackets, the smallest and largest
    ratio of one round. The bytes columns are XLA's bytes accessed per logit.
    """
    cases = _by_case(rows)
    names = list(dict.fromkeys(r.library for r in rows))
    kinds = [
        ("fwd", "Forward (mean loss)"),
        ("fwd_bwd", "Forward + backward (`jax.value_and_grad` of the mean loss)"),
    ]
    if any(r.fwd_bwd_donated for r in rows):
        kinds.append(("fwd_bwd_donated", "Forward + backward, logits donated (`donate_argnums=0`)"))
    out = []
    for kind, title in kinds:
        shown = [n for n in names if kind != "fwd_bwd_donated" or n != "PyTorch"]
        jax_names = [n for n in shown if n != "PyTorch"]
        body = []
        for case, libs in cases.items():
            times = [ms(getattr(libs[n], kind)) if n in libs else "-" for n in shown]
            ours = next(r for name, r in libs.items() if name.startswith("jaxsce"))
            samples = f"{kind}_samples"
            lo_hi = spread(getattr(ours, samples), getattr(libs["optax"], samples))
            per = []
            if kind != "fwd_bwd_donated":
                per = [per_byte(getattr(libs[n], f"bytes_{kind}")) for n in jax_names]
            body.append([*case, *times, ratio_cell(ratio(rows, case, kind), lo_hi), *per])
        header = ["N", "V", "dtype", *(f"{n} (ms)" for n in shown), "jaxsce / optax"]
        if kind != "fwd_bwd_donated":
            header += [f"{n} bytes/logit" for n in jax_names]
        out.append(f"#### {title}\n\n" + table(header, body))
    return "\n\n".join(out)


def nn_tables(rows: Sequence[NNRow]) -> str:
    """jaxsce against jax.nn: median ms, ratio with per-round range, bytes per logit."""
    out = []
    for kind, title in [("fwd", "Forward"), ("fwd_bwd", "Forward + backward")]:
        body = []
        cases: dict[tuple[str, int, int, str], dict[str, NNRow]] = {}
        for r in rows:
            cases.setdefault((r.function, r.n, r.v, r.dtype), {})[r.library] = r
        for case, libs in cases.items():
            ours, theirs = libs["jaxsce"], libs["jax.nn"]
            lo_hi = spread(getattr(ours, f"{kind}_samples"), getattr(theirs, f"{kind}_samples"))
            body.append(
                [
                    *case,
                    ms(getattr(ours, kind)),
                    ms(getattr(theirs, kind)),
                    ratio_cell(getattr(ours, kind) / getattr(theirs, kind), lo_hi),
                    per_byte(getattr(ours, f"bytes_{kind}")),
                    per_byte(getattr(theirs, f"bytes_{kind}")),
                ]
            )
        header = [
            "function",
            "N",
            "V",
            "dtype",
            "jaxsce (ms)",
            "jax.nn (ms)",
            "jaxsce / jax.nn",
            "jaxsce bytes/logit",
            "jax.nn bytes/logit",
        ]
        out.append(f"#### {title}\n\n" + table(header, body))
    return "\n\n".join(out)


def nn_ratios(rows: Sequence[NNRow]) -> dict[str, list[float]]:
    """kind -> jaxsce / jax.nn ratio of medians at every function, size and dtype."""
    out: dict[str, list[float]] = {"fwd": [], "fwd_bwd": []}
    by_case: dict[tuple[str, int, int, str], dict[str, NNRow]] = {}
    for r in rows:
        by_case.setdefault((r.function, r.n, r.v, r.dtype), {})[r.library] = r
    for libs in by_case.values():
        for kind in out:
            out[kind].append(getattr(libs["jaxsce"], kind) / getattr(libs["jax.nn"], kind))
    return out


def memory_table(rows: Sequence[SpeedRow]) -> str:
    """XLA's temporary bytes, live bytes and residual bytes per library."""
    body = [
        [
            r.n,
            r.v,
            r.dtype,
            r.library,
            mib(r.temp_fwd_bwd),
            mib(r.footprint_fwd_bwd),
            mib(r.temp_fwd_bwd_donated),
            mib(r.footprint_fwd_bwd_donated),
            f"{mib(r.residuals)} ({mib(r.residuals_beyond_inputs)})",
        ]
        for r in rows
        if r.library != "PyTorch"
    ]
    header = [
        "N",
        "V",
        "dtype",
        "library",
        "temp fwd+bwd",
        "live fwd+bwd",
        "temp donated",
        "live donated",
        "residuals (not inputs)",
    ]
    return table(header, body)


def accuracy_table(rows: Sequence[AccuracyRow], margins: Sequence[float]) -> str:
    """Largest ulp errors per library, overall and at a few margins."""
    shown = [m for m in margins if float(m).is_integer() and int(m) % 10 == 0]
    header = [
        "library",
        "loss (max ulp)",
        "grad, label entry",
        "grad, other entries",
        *(f"loss at margin {int(m)}" for m in shown),
    ]
    body = [
        [
            r.library,
            f"{r.loss:.3g}",
            f"{r.grad_label:.3g}",
            f"{r.grad_other:.3g}",
            *(f"{r.loss_by_margin[float(m)]:.3g}" for m in shown),
        ]
        for r in rows
    ]
    return table(header, body)


def softmax_accuracy_table(rows: Sequence[SoftmaxAccuracyRow]) -> str:
    """Largest and mean ulp error of each ``softmax`` over every entry."""
    body = [[r.library, f"{r.largest:.3g}", f"{r.mean:.3g}"] for r in rows]
    return table(["softmax", "largest error (ulp)", "mean error (ulp)"], body)


def plot(rows: Sequence[SpeedRow], path: Path) -> None:
    """Forward+backward time and memory against V, float32, at the most measured N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f32 = [r for r in rows if r.dtype == "float32"]
    counts: dict[int, int] = {}
    for r in f32:
        counts[r.n] = counts.get(r.n, 0) + 1
    n = max(counts, key=lambda k: (counts[k], k))
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r.library for r in f32):
        mine = sorted((r for r in f32 if r.library == name and r.n == n), key=lambda r: r.v)
        vs = [r.v for r in mine]
        (line,) = ax_time.plot(vs, [r.fwd_bwd * 1e3 for r in mine], "o-", label=f"{name} fwd+bwd")
        ax_time.plot(
            vs, [r.fwd * 1e3 for r in mine], "s--", color=line.get_color(), label=f"{name} fwd"
        )
        if name != "PyTorch":
            ax_mem.plot(
                vs,
                [r.footprint_fwd_bwd / 2**20 for r in mine],
                "o-",
                color=line.get_color(),
                label=f"{name} live fwd+bwd",
            )
            ax_mem.plot(
                vs,
                [r.residuals_beyond_inputs / 2**20 for r in mine],
                "s--",
                color=line.get_color(),
                label=f"{name} residuals",
            )
    ax_time.set(
        xscale="log",
        yscale="log",
        xlabel="classes V",
        ylabel="median time (ms)",
        title=f"Integer-label cross-entropy, N={n}, float32",
    )
    ax_mem.set(
        xscale="log",
        yscale="log",
        xlabel="classes V",
        ylabel="MiB",
        title="Memory: live bytes of jit(value_and_grad), residuals",
    )
    for ax in (ax_time, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
