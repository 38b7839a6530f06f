"""The benchmark harness runs end to end at its smallest size and writes its results."""

import json

import jax.numpy as jnp
import numpy as np

import jaxsce
from benchmarks import __main__ as harness
from benchmarks import _accuracy, _timing


def test_harness_writes_tables_and_plot(tmp_path, capsys):
    results = harness.main(
        [
            *("--sizes", "256x1000", "--dtypes", "float32", "--repeats", "2"),
            *("--no-large-vocab", "--out", str(tmp_path)),
        ]
    )
    markdown = (tmp_path / "results.md").read_text()
    for heading in ("## Speed", "## Memory", "## Accuracy", "CPU", "jax"):
        assert heading in markdown
    assert "| 256 | 1000 | float32 |" in markdown
    assert (tmp_path / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "results.json").read_text())["speed"]
    libraries = {row["library"] for row in results["speed"]}
    assert "optax" in libraries and any(name.startswith("jaxsce") for name in libraries)
    assert all(row["fwd_bwd"] > 0 for row in results["speed"])
    assert "Headline case" in capsys.readouterr().out  # 2048 x 32768 was not run


def test_residuals_tell_inputs_apart():
    logits = jnp.ones((4, 8))

    def keeps_its_input(x):
        return jnp.sum(x * x)

    assert _timing.residual_bytes(keeps_its_input, logits) >= logits.nbytes
    assert _timing.residual_bytes(keeps_its_input, logits, exclude_inputs=True) == 0

    def keeps_a_new_array(x):
        return jnp.sum(jnp.sin(x))

    assert _timing.residual_bytes(keeps_a_new_array, logits, exclude_inputs=True) > 0


def test_ulp_error_against_mpmath_detects_a_wrong_loss():
    margins = np.array([0.0, 5.0, 30.0])
    good = _accuracy.jax_loss_and_grad(jaxsce.softmax_cross_entropy_with_integer_labels)

    def log_of_sum(logits, labels):  # log(1 + rest) instead of log1p(rest): loses the tail
        losses, grads = good(logits, labels)
        z = logits.astype(np.float64)
        y = np.take_along_axis(z, labels[:, None], -1)[:, 0]
        exact_sum = np.exp(z - y[:, None]).sum(-1).astype(np.float32)
        return np.log(exact_sum), grads

    rows = _accuracy.measure(margins, candidates={"good": good, "wrong": log_of_sum})
    assert max(rows[0].loss, rows[0].grad_label, rows[0].grad_other) < 8
    assert rows[1].loss > 1e3


def test_large_vocab_benchmark_reports_ratios_and_floor(tmp_path, capsys):
    from benchmarks import large_vocab

    out = tmp_path / "large_vocab.md"
    rows, text = large_vocab.run(
        n=32,
        d=8,
        timed_vocabs=(96,),
        memory_vocabs=(96, 192),
        repeats=1,
        chunk_sizes=(32, 64),
        memory_rows=(64,),
        out=str(out),
    )
    assert [(row.n, row.v) for row in rows] == [(32, 96), (32, 192), (64, 96)]
    timed, untimed, more_rows = rows
    assert set(timed.seconds) == {
        "precompute", "recompute", "unfused jaxsce", "unfused optax", "matmul"
    }
    assert all(t > 0 for t in timed.seconds.values()) and untimed.seconds == {}
    assert all(b >= 0 for row in rows for b in row.temp.values())
    assert text + "\n" in out.read_text()
    assert "| 32 | 8 | 96 |" in text and "| 32 | 8 | 192 | - |" in text
    assert "| 64 | 8 | 96 | - |" in text
    assert "| chunk_size |" in text and "\n| 64 | " in text  # the chunk-size table
    assert "bfloat16" in text
    printed = capsys.readouterr().out
    assert "precompute/unfused" in printed and "4 x matmul / unfused" in printed
