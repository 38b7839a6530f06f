"""The examples run in a reduced mode, learn, and agree with their references."""

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
import optax
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def strict():
    """Strict dtype promotion and explicit broadcasting, as in the library's tests."""
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture
def optax_promotion():
    """Standard dtype promotion, explicit broadcasting.

    optax's adam is not clean under strict promotion (its bias correction
    computes ``decay**count`` with a float32 decay and an int32 count).
    """
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("raise"):
        yield


def test_softmax_regression_learns_and_hand_update_equals_autodiff(strict, capsys):
    example = load_example("softmax_regression")
    result = example.main(["--epochs", "3"])
    assert result["hand_accuracy"] > 0.9
    assert result["autodiff_accuracy"] > 0.9
    assert result["sklearn_accuracy"] > 0.9
    # Every step of ~100: the two parameter matrices agree to float32 rounding.
    assert result["max_parameter_gap"] < 1e-5 * max(1.0, result["parameter_scale"])
    out = capsys.readouterr().out
    assert "epoch   3/3 [" in out and "held-out accuracy" in out


def test_softmax_regression_comparison_rejects_a_wrong_update(strict):
    """The lockstep check can fail: updates off by the 1/B or the I_y are told apart."""
    example = load_example("softmax_regression")
    x_train, _, y_train, _ = example.load()
    x, y = x_train[:50], y_train[:50]
    rng = np.random.default_rng(1)
    theta = rng.standard_normal((x.shape[1], 10)).astype(np.float32) * 0.1
    lr = 0.5
    autodiff = np.asarray(example.autodiff_step(theta, x, y, lr))
    assert np.max(np.abs(example.hand_step(theta, x, y, lr) - autodiff)) < 1e-6

    def softmax(h):
        e = np.exp(h - h.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    iy = np.eye(10, dtype=np.float32)[y]
    without_mean = theta - lr * x.T @ (softmax(x @ theta) - iy)
    without_label = theta - lr / len(x) * x.T @ softmax(x @ theta)
    for wrong in (without_mean, without_label):
        assert np.max(np.abs(wrong - autodiff)) > 1e-2


def test_mlp_with_label_smoothing_and_z_loss_learns(optax_promotion, capsys):
    example = load_example("mlp_optax")
    result = example.main(["--epochs", "3"])
    assert result["test_accuracy"] > 0.8  # chance is 0.1
    assert np.isfinite(result["train_loss"])
    assert "held-out accuracy" in capsys.readouterr().out


# -- the character-level language model --------------------------------------

CHAR_LM_TINY = [
    "--steps", "8", "--batch", "8", "--context", "32", "--width", "32", "--heads", "2",
    "--layers", "1", "--lr", "1e-2", "--eval-every", "4", "--eval-rows", "16", "--no-sample",
]  # fmt: skip

FOUR_DEVICES = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("char_lm", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
result = module.main(sys.argv[2:])
print(json.dumps({"devices": result["devices"], "losses": result["losses"]}))
"""


@pytest.fixture(scope="module")
def char_lm():
    return load_example("char_lm")


@pytest.fixture(scope="module")
def char_lm_one_device(char_lm, tmp_path_factory):
    """The reduced run on one device, in this process: its result, output and plot."""
    example = char_lm
    plot = tmp_path_factory.mktemp("char_lm") / "loss.png"
    out = io.StringIO()
    # Standard dtype promotion for optax's adam (see optax_promotion), explicit broadcasting.
    promotion = jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("raise")
    with promotion[0], promotion[1], contextlib.redirect_stdout(out):
        result = example.main([*CHAR_LM_TINY, "--plot", str(plot)])
    return result, out.getvalue(), plot


def test_char_lm_learns_and_draws_its_curve(char_lm_one_device):
    result, out, plot = char_lm_one_device
    losses = np.asarray(result["losses"])
    assert len(losses) == 8 and np.all(np.isfinite(losses))
    # At initialisation the loss is near log 128 (plus the logits' spread); training lowers it.
    assert np.log(128) - 0.5 < losses[0] < np.log(128) + 2.0
    assert losses[-1] < losses[0] - 1.0
    assert result["eval_losses"][-1] < result["eval_losses"][0] - 0.5  # held-out text too
    assert 0.05 < result["padding_fraction"] < 0.5  # the rows are padded: ignore_index matters
    assert "training on 1 device" in out and "8/8" in out  # the progress bar
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_char_lm_vocab_parallel_on_four_devices_agrees_with_one(char_lm_one_device):
    one, _, _ = char_lm_one_device
    # A fresh process: --devices 4 asks JAX for 4 CPU devices before it starts.
    run = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, str(EXAMPLES / "char_lm.py"), *CHAR_LM_TINY,
         "--devices", "4", "--eval-every", "0", "--plot", "", "--no-progress"],
        capture_output=True, text=True, cwd=EXAMPLES.parent, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    four = json.loads(run.stdout.strip().splitlines()[-1])
    assert four["devices"] == 4
    # The same initial parameters and first batch: the first loss agrees to float32 rounding,
    # and the runs stay together over the few steps (reductions in another order).
    np.testing.assert_allclose(four["losses"][0], one["losses"][0], rtol=1e-6)
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-3)


def test_char_lm_loss_is_the_mean_over_characters_only(char_lm, optax_promotion):
    """The example's loss equals optax on the logits, averaged over non-padded positions."""
    example = char_lm
    args = example.parse([*CHAR_LM_TINY, "--plot", ""])
    model = example.create_model(args.width, args.heads, args.layers, args.context, args.seed)
    rows = example.rows_of_lines(example.read_stdlib(["textwrap.py"]), args.context + 1)[:16]
    inputs, labels = example.inputs_and_labels(rows)
    loss = example.make_loss(None)
    got, logits = example.nnx.jit(
        lambda model: (loss(model.hidden(inputs), model.kernel[...], labels), model.logits(inputs))
    )(model)
    kept = labels != -100
    per_position = optax.softmax_cross_entropy_with_integer_labels(
        logits, np.where(kept, labels, 0)
    )
    want = np.sum(np.where(kept, per_position, 0.0)) / np.sum(kept)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Counting the padding (as class 0) instead gives another value: the mask is in use.
    assert 0 < kept.mean() < 1
    assert abs(float(np.mean(per_position)) - float(want)) > 1e-2
