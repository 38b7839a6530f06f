"""The examples run in a reduced mode, learn, and agree with their references."""

import importlib.util
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
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
