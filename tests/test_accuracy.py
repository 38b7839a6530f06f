"""Float32 accuracy on confident predictions, against a 120-digit mpmath reference.

The label logit sits ``margin`` above the largest other logit. The loss of a
confident prediction is tiny (about ``exp(-margin)``) and so is every entry of
its gradient; optax and PyTorch return 0 or lose most digits there. jaxsce
keeps every value within ``BOUND`` ulp.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsce
from tests._references import integer_ce_mp, ulp_error

BOUND = 4  # ulp; the worst case measured over this grid is about 3.7
MARGINS = (0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0)
CASES = [(10, 0.0), (10, 1e4), (1000, 0.0), (1000, 1e3), (1000, -1e4), (1000, 1e4)]


def _confident_batch(num_classes, scale, seed):
    rng = np.random.default_rng(seed)
    z = (scale + rng.uniform(-12, 0, (len(MARGINS), num_classes))).astype(np.float32)
    labels = rng.integers(num_classes, size=len(MARGINS))
    for row, margin in enumerate(MARGINS):
        z[row, labels[row]] = np.float32(z[row].max() + margin)
    return z, labels


def _integer_loss_and_grad(fn):
    return jax.jit(jax.vmap(jax.value_and_grad(fn)))


def _reference(z, labels):
    refs = [integer_ce_mp(zi, int(yi)) for zi, yi in zip(z, labels)]
    return np.array([r[0] for r in refs]), np.stack([r[1] for r in refs])


@pytest.fixture(scope="module")
def cases():
    out = {}
    for i, (c, scale) in enumerate(CASES):
        z, y = _confident_batch(c, scale, seed=i)
        out[(c, scale)] = (z, y, *_reference(z, y))
    return out


@pytest.mark.parametrize("case", CASES, ids=[f"C{c}-at{s:g}" for c, s in CASES])
def test_integer_labels_within_a_few_ulp(cases, case):
    z, y, loss_ref, grad_ref = cases[case]
    loss, grad = _integer_loss_and_grad(jaxsce.softmax_cross_entropy_with_integer_labels)(z, y)
    assert ulp_error(loss, loss_ref).max() <= BOUND
    assert ulp_error(grad, grad_ref).max() <= BOUND


@pytest.mark.parametrize("case", CASES, ids=[f"C{c}-at{s:g}" for c, s in CASES])
def test_one_hot_probabilities_within_a_few_ulp(cases, case):
    z, y, loss_ref, grad_ref = cases[case]
    onehot = jax.nn.one_hot(y, z.shape[-1], dtype=jnp.float32)
    loss, grad = jax.jit(jax.vmap(jax.value_and_grad(jaxsce.softmax_cross_entropy)))(z, onehot)
    assert ulp_error(loss, loss_ref).max() <= BOUND
    assert ulp_error(grad, grad_ref).max() <= BOUND


def test_hundred_thousand_classes():
    z, y = _confident_batch(100_000, 1e3, seed=7)
    z, y = z[[0, 4]], y[[0, 4]]  # margins 0 and 20: the mpmath reference is slow here
    loss_ref, grad_ref = _reference(z, y)
    loss, grad = _integer_loss_and_grad(jaxsce.softmax_cross_entropy_with_integer_labels)(z, y)
    assert ulp_error(loss, loss_ref).max() <= BOUND
    assert ulp_error(grad, grad_ref).max() <= BOUND


def test_the_bound_rejects_optax(cases):
    """The same check fails optax: it returns 0 for the loss and the label's gradient."""
    z, y, loss_ref, grad_ref = cases[(1000, 0.0)]
    loss, grad = _integer_loss_and_grad(optax.softmax_cross_entropy_with_integer_labels)(z, y)
    confident = np.array(MARGINS) >= 20
    assert np.all(np.asarray(loss)[confident] == 0) and np.all(loss_ref[confident] > 0)
    assert ulp_error(loss, loss_ref).max() > 1e6
    assert ulp_error(grad, grad_ref).max() > 1e3


def test_the_bound_rejects_the_textbook_gradient(cases):
    """``p - onehot`` with ``p = exp(z - lse)`` fails the bound at large logits."""
    z, y, _, grad_ref = cases[(1000, 1e4)]
    naive = jax.nn.softmax(z) - jax.nn.one_hot(y, z.shape[-1])
    assert ulp_error(naive, grad_ref).max() > 100


def test_half_precision_is_computed_in_float32(cases):
    z, y, loss_ref, _ = cases[(1000, 0.0)]
    zb = jnp.asarray(z).astype(jnp.bfloat16)
    loss, grad = _integer_loss_and_grad(jaxsce.softmax_cross_entropy_with_integer_labels)(zb, y)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    ref, _ = _reference(np.asarray(zb.astype(jnp.float32)), y)
    assert ulp_error(loss, ref).max() <= BOUND


# -- the shift that makes z - a exact (jaxsce._logsumexp.exact_shift) ---------------

# Largest logits in every row of exact_shift's table, its edges included.
SHIFTED_SCALES = (
    (-200.0, -70.0, -40.0, -23.0, -17.5, 79.5, 81.0, 96.5, 103.5, 112.5, 119.5, 140.0, 144.5, 160.0)
)


@pytest.mark.parametrize("scale", SHIFTED_SCALES)
def test_within_a_few_ulp_wherever_the_largest_logit_lies(scale):
    """Margins up to 60 below a largest logit in each row of the shift table."""
    rng = np.random.default_rng(11)
    margins = np.array([0.0, 5.0, 20.0, 40.0, 60.0])
    z = rng.uniform(-8, 0, (len(margins), 10))
    labels = rng.integers(10, size=len(margins))
    z[np.arange(len(margins)), labels] = margins  # the label leads the others by `margin`
    z = (z - margins[:, None] + scale).astype(np.float32)  # and is the largest logit, `scale`
    loss_ref, grad_ref = _reference(z, labels)
    loss, grad = _integer_loss_and_grad(jaxsce.softmax_cross_entropy_with_integer_labels)(z, labels)
    assert ulp_error(loss, loss_ref).max() <= BOUND
    assert ulp_error(grad, grad_ref).max() <= BOUND
    value = jax.jit(jaxsce.softmax_cross_entropy_with_integer_labels)(z, labels)
    assert ulp_error(value, loss_ref).max() <= BOUND


def test_the_bound_rejects_the_plain_shift():
    """Shifting by the largest logit itself rounds ``z - m``: up to 8 ulp at margin 40.

    Two classes, the label 40 above the other, whose logit has a finer grid
    than 40 - z; even with an exact ``exp`` the rounded difference breaks the
    bound, while jaxsce's shift (0 here) keeps every row within it.
    """
    rng = np.random.default_rng(5)
    z = np.stack([np.full(200, 40.0), rng.uniform(-1, 1, 200)], -1).astype(np.float32)
    y = np.zeros(200, int)
    loss_ref, _ = _reference(z, y)
    d = (z[:, 1] - z[:, 0]).astype(np.float32)  # rounded in float32
    plain = np.log1p(np.exp(d.astype(np.float64)))
    assert ulp_error(plain, loss_ref).max() > BOUND
    loss = jax.jit(jaxsce.softmax_cross_entropy_with_integer_labels)(z, y)
    assert ulp_error(loss, loss_ref).max() <= BOUND


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_value_only_sum_by_blocks(monkeypatch, cases, num_classes):
    """The value-only sum in blocks (forced here at 1000 classes) within the same bound."""
    from jaxsce import _cross_entropy

    monkeypatch.setattr(_cross_entropy, "LABEL_BLOCK", 128)
    jax.clear_caches()
    for case in [c for c in CASES if c[0] == num_classes]:
        z, y, loss_ref, _ = cases[case]
        loss = jax.jit(jaxsce.softmax_cross_entropy_with_integer_labels)(z, y)
        assert ulp_error(loss, loss_ref).max() <= BOUND
    jax.clear_caches()
