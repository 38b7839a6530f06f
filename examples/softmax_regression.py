r"""Softmax regression on scikit-learn's handwritten digits, trained two ways.

A linear model ``h = X theta`` (theta of shape (features + 1, classes), the
last input column all ones for the bias) is trained by minibatch SGD on the
8x8 digits that ship with scikit-learn, in lockstep:

* by the hand-derived update of the seed (the gradient of the mean
  cross-entropy of a batch of B rows),

  .. math::

     Z = \operatorname{softmax}(X \theta), \qquad
     \theta \leftarrow \theta - \frac{\alpha}{B} X^\top (Z - I_y),

  computed in NumPy, independently of JAX;
* by ``jax.grad`` through ``jaxsce.softmax_cross_entropy_with_integer_labels``.

After every step the two parameter matrices are compared; they agree to
float32 rounding. The held-out accuracy is printed beside scikit-learn's
``LogisticRegression`` fitted on the same split.

Run: ``python examples/softmax_regression.py [--epochs 30]``.
"""

import argparse
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import jaxsce


def load(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1] with a ones column: X_train, X_test, y_train, y_test."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    return train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )


def hand_step(theta: np.ndarray, x: np.ndarray, y: np.ndarray, lr: float) -> np.ndarray:
    """The seed's update ``theta - lr / B * X^T (Z - I_y)``, in NumPy float32."""
    batch, classes = len(x), theta.shape[1]
    h = x @ theta
    e = np.exp(h - h.max(axis=1, keepdims=True))  # shifted for safety; Z is unchanged
    z = e / e.sum(axis=1, keepdims=True)
    iy = np.zeros((batch, classes), np.float32)
    iy[np.arange(batch), y] = 1
    return theta - np.float32(lr / batch) * (x.T @ (z - iy))


def mean_loss(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of the linear model on a batch."""
    return jnp.mean(jaxsce.softmax_cross_entropy_with_integer_labels(x @ theta, y))


@jax.jit
def autodiff_step(theta: jax.Array, x: jax.Array, y: jax.Array, lr: float) -> jax.Array:
    """``theta - lr * grad(mean_loss)``, the gradient from ``jax.grad`` through jaxsce."""
    return theta - lr * jax.grad(mean_loss)(theta, x, y)


def accuracy(theta: np.ndarray | jax.Array, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose largest logit is the label."""
    return float(np.mean(np.argmax(np.asarray(x @ theta), axis=1) == y))


def progress(done: int, total: int, width: int = 30) -> str:
    """A text progress bar, e.g. ``[#########.....]``."""
    filled = round(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def train(
    epochs: int = 30, lr: float = 0.5, batch: int = 50, seed: int = 0, verbose: bool = True
) -> dict[str, float]:
    """Train both ways in lockstep; return accuracies and the largest parameter gap."""
    x_train, x_test, y_train, y_test = load(seed)
    rng = np.random.default_rng(seed)
    theta_hand = np.zeros((x_train.shape[1], 10), np.float32)
    theta_ad = jnp.asarray(theta_hand)
    max_gap = 0.0
    steps = len(x_train) // batch
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        for step in range(steps):
            rows = order[step * batch : (step + 1) * batch]
            x, y = x_train[rows], y_train[rows]
            theta_hand = hand_step(theta_hand, x, y, lr)
            theta_ad = autodiff_step(theta_ad, x, y, lr)
            max_gap = max(max_gap, float(np.max(np.abs(theta_hand - np.asarray(theta_ad)))))
        if verbose:
            loss = float(mean_loss(theta_ad, x_train, y_train))
            print(f"epoch {epoch:3d}/{epochs} {progress(epoch, epochs)} train loss {loss:.4f}")
    sklearn_model = LogisticRegression(max_iter=5000).fit(x_train[:, :-1], y_train)
    return {
        "hand_accuracy": accuracy(theta_hand, x_test, y_test),
        "autodiff_accuracy": accuracy(theta_ad, x_test, y_test),
        "sklearn_accuracy": float(sklearn_model.score(x_test[:, :-1], y_test)),
        "max_parameter_gap": max_gap,
        "parameter_scale": float(np.max(np.abs(theta_hand))),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.epochs, args.lr, args.batch, args.seed)
    print(
        f"held-out accuracy: hand-derived SGD {result['hand_accuracy']:.4f}, "
        f"jax.grad through jaxsce {result['autodiff_accuracy']:.4f}, "
        f"sklearn LogisticRegression {result['sklearn_accuracy']:.4f}"
    )
    print(
        f"largest |theta_hand - theta_autodiff| over all steps: "
        f"{result['max_parameter_gap']:.2e} (parameters up to {result['parameter_scale']:.2f})"
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
