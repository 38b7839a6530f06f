"""The column-by-column path for short rows: same results, accuracy and edge cases.

Rows of at most ``COLUMNS`` classes (softmax; ``LABEL_COLUMNS`` for the loss,
``REST_COLUMNS`` for the log-sum-exp), in batches of at least ``COLUMN_ROWS``
rows, are reduced as a tree of their columns (``jaxsce._logsumexp.by_columns``).
The ``columns`` fixture lowers ``COLUMN_ROWS`` to 1 so that the small arrays
here take that path; each test checks against mpmath or the row path, and the
first checks that the fixture does switch paths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsce
from jaxsce import _logsumexp
from tests._references import integer_ce_mp, lse_mp, softmax_mp, ulp_error

CE = jaxsce.softmax_cross_entropy_with_integer_labels


@pytest.fixture
def columns(monkeypatch):
    """Every row of at most ``COLUMNS`` classes takes the column path."""
    monkeypatch.setattr(_logsumexp, "COLUMN_ROWS", 1)
    jax.clear_caches()
    yield
    jax.clear_caches()


def _slices(f, *args):
    """Slice operations in the optimised program of ``jit(f)``: the columns."""
    return jax.jit(f).lower(*args).compile().as_text().count(" slice(")


def test_which_rows_go_by_columns():
    def f32(*shape):
        return jnp.zeros(shape, jnp.float32)

    assert _logsumexp.by_columns(f32(1024, 10))
    assert _logsumexp.by_columns(f32(4, 256, 32))  # rows counted over the batch axes
    assert not _logsumexp.by_columns(f32(1023, 10))
    assert _logsumexp.by_columns(f32(1024, 33)) == 0  # 3 x 11: no block of 16 to 32
    assert _logsumexp.by_columns(f32(1024, 100), _logsumexp.LABEL_COLUMNS) == 100
    assert _logsumexp.by_columns(f32(1024, 128), _logsumexp.REST_COLUMNS) == 128
    # Longer rows in blocks: the widest divisor of C from MIN_WIDTH up to the limit.
    assert _logsumexp.by_columns(f32(1024, 1000), _logsumexp.REST_COLUMNS) == 125
    assert _logsumexp.by_columns(f32(1024, 1000), _logsumexp.LABEL_COLUMNS) == 100
    assert _logsumexp.by_columns(f32(128, 1000), _logsumexp.REST_COLUMNS) == 125  # 1024 blocks
    assert not _logsumexp.by_columns(f32(64, 1000), _logsumexp.REST_COLUMNS)  # 512 blocks
    assert not _logsumexp.by_columns(f32(1024, 997), _logsumexp.REST_COLUMNS)  # a prime
    assert not _logsumexp.by_columns(f32(1024, 2048), _logsumexp.REST_COLUMNS)  # past BLOCK
    assert not _logsumexp.by_columns(f32(1024, 1000), blocks=False)
    assert not _logsumexp.by_columns(jnp.zeros((1024, 1000), jnp.bfloat16), _logsumexp.REST_COLUMNS)


def test_the_fixture_switches_the_path(monkeypatch):
    z = jnp.zeros((8, 10), jnp.float32)
    assert _slices(jaxsce.logsumexp, z) == 0
    monkeypatch.setattr(_logsumexp, "COLUMN_ROWS", 1)
    jax.clear_caches()
    assert _slices(jaxsce.logsumexp, z) >= 10
    assert _slices(CE, z, jnp.zeros(8, jnp.int32)) >= 10
    assert _slices(jaxsce.logsumexp, jnp.zeros((8, 1000), jnp.float32)) >= 125  # blocks
    jax.clear_caches()


def _confident_rows(num_classes, scale, seed=0):
    """Rows whose top logit leads the others by 0 to 40, at ``scale``."""
    rng = np.random.default_rng(seed)
    margins = (0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0)
    z = (scale + rng.uniform(-12, 0, (len(margins), num_classes))).astype(np.float32)
    top = rng.integers(num_classes, size=len(margins))
    for row, margin in enumerate(margins):
        z[row, top[row]] = np.float32(z[row].max() + margin)
    return z, top


SCALES = (-200.0, -40.0, -17.5, 0.0, 79.5, 96.5, 112.5, 144.5, 1e4)


@pytest.mark.parametrize("num_classes", [10, 100, 1000])
@pytest.mark.parametrize("scale", SCALES)
def test_within_a_few_ulp_of_mpmath(columns, scale, num_classes):
    """The bounds of the row path: lse 1 ulp, log p_top and the loss 4, p 6.

    100 classes: the log-sum-exp (``logsumexp``, ``log_softmax``) and the
    loss go by columns, softmax by rows; 1000 classes: the log-sum-exp and
    the loss by blocks of 125 and 100 columns.

    Near ``lse = 0`` (scale 0) ``m + log1p(r)`` cancels, on either path, and
    the bound on lse is the absolute one of ``log1p(r)``: 1 ulp of 1.
    """
    z, top = _confident_rows(num_classes, scale, seed=int(abs(scale)))
    lse_ref = np.array([lse_mp(r) for r in z])
    lse_err = np.abs(np.asarray(jaxsce.logsumexp(z), np.float64) - lse_ref.astype(np.float64))
    assert np.all(lse_err <= np.maximum(np.spacing(np.abs(lse_ref).astype(np.float32)), 2**-23))
    rows = np.arange(len(z))
    lp_top = jaxsce.log_softmax(z)[rows, top]
    assert ulp_error(lp_top, z[rows, top] - lse_ref).max() <= 4
    if num_classes <= _logsumexp.COLUMNS:  # softmax's own sum goes by columns
        p_ref = np.stack([softmax_mp(r) for r in z])
        assert ulp_error(jaxsce.softmax(z), p_ref).max() <= 6
    for labels in (top, (top + 1) % num_classes):  # the largest logit, and another one
        loss_ref = np.array([integer_ce_mp(r, int(y))[0] for r, y in zip(z, labels)])
        loss = jax.jit(CE)(z, labels)
        assert ulp_error(loss, loss_ref).max() <= 4


def test_the_bound_rejects_a_sum_that_keeps_the_top_term(columns):
    """``log(1 + r)`` with the top term's 1 in the sum: 0 instead of ``-r``."""
    z, top = _confident_rows(10, 0.0)
    rows = np.arange(len(z))
    ref = z[rows, top] - np.array([lse_mp(r) for r in z])
    m = z.max(-1)
    plain = (z[rows, top] - m) - np.log(np.sum(np.exp(z - m[:, None]), -1))
    assert ulp_error(plain.astype(np.float32), ref).max() > 100
    assert ulp_error(jaxsce.log_softmax(z)[rows, top], ref).max() <= 4


def test_ties_count_exactly(columns):
    """Tied largest logits: all left out of the sum, their count added back."""
    z = np.array([[2.0, 2.0, 0.0, -1.0], [3.0, 3.0, 3.0, 3.0], [5.0, -9.0, 5.0, -9.0]], np.float32)
    lse_ref = np.array([lse_mp(r) for r in z])
    assert ulp_error(jaxsce.logsumexp(z), lse_ref).max() <= 1
    assert ulp_error(jaxsce.softmax(z), np.stack([softmax_mp(r) for r in z])).max() <= 6
    loss_ref = np.array([integer_ce_mp(r, 0)[0] for r in z])
    assert ulp_error(jax.jit(CE)(z, np.zeros(3, int)), loss_ref).max() <= 4


def test_random_rows_with_ties_and_neg_inf_entries(columns):
    """Every function against mpmath on rows with tied largest logits and ``-inf``."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, (40, 12)).astype(np.float32)
    z[::5, 3] = z[::5].max(-1)  # ties with the largest
    z[::7, 5] = -np.inf
    labels = rng.integers(12, size=40)
    labels[::7] = 0  # not on a -inf entry
    lse_ref = np.array([float(lse_mp(r)) for r in z])
    assert ulp_error(jaxsce.logsumexp(z), lse_ref).max() <= 1
    p, p_ref = jaxsce.softmax(z), np.stack([softmax_mp(r) for r in z])
    assert np.all(p[::7, 5] == 0)
    assert ulp_error(p, p_ref).max() <= 6
    loss_ref = np.array([integer_ce_mp(r, int(y))[0] for r, y in zip(z, labels)])
    assert ulp_error(jax.jit(CE)(z, labels), loss_ref).max() <= 4
    # log p = (z - m) - log1p(r): within 2 ulp of the larger of its two terms.
    lp, lp_ref = np.asarray(jaxsce.log_softmax(z), np.float64), z - lse_ref[:, None]
    finite = np.isfinite(z)
    assert np.all(lp[~finite] == -np.inf)
    m = z.max(-1, keepdims=True)
    scale = np.maximum(np.abs(z - m), np.abs(lse_ref[:, None] - m))[finite]
    assert np.all(np.abs(lp[finite] - lp_ref[finite]) <= 2 * np.spacing(scale.astype(np.float32)))


def test_special_values(columns):
    """Empty rows, NaN, +inf, ``-inf`` logits and bad labels, as on the row path."""
    inf, nan = np.inf, np.nan
    z = jnp.array(
        [
            [-inf, -inf, -inf],  # no valid class
            [0.0, nan, 1.0],
            [0.0, inf, 1.0],
            [0.0, -inf, 1.0],
        ]
    )
    lse = jaxsce.logsumexp(z)
    assert lse[0] == -inf and np.isnan(lse[1]) and np.isnan(lse[2])
    np.testing.assert_allclose(lse[3], np.logaddexp(0.0, 1.0), rtol=1e-7)
    p = jaxsce.softmax(z)
    assert np.all(p[0] == 0) and np.all(np.isnan(p[1])) and np.all(np.isnan(p[2]))
    assert p[3, 1] == 0
    lp = jaxsce.log_softmax(z)
    assert np.all(lp[0] == -inf) and lp[3, 1] == -inf
    loss = jax.jit(CE)(z, jnp.array([0, 0, 0, 1]))
    assert loss[0] == inf and np.isnan(loss[1]) and np.isnan(loss[2]) and loss[3] == inf
    bad = jax.jit(CE)(z[3:], jnp.array([3]))  # out of range: NaN, not a wrap
    assert np.isnan(bad[0])
    where = jnp.array([[True, False, True]] * 4)
    masked = jaxsce.logsumexp(jnp.zeros((4, 3)), where=where)
    np.testing.assert_allclose(masked, np.log(2.0), rtol=1e-7)


def test_gradients_match_jax_nn(columns):
    """The backward passes read the column sums: same gradient as jax.nn."""
    z = jnp.asarray(np.random.default_rng(1).normal(0, 2, (16, 10)).astype(np.float32))
    for ours, theirs in (
        (jaxsce.logsumexp, lambda x: jax.nn.logsumexp(x, axis=-1)),
        (jaxsce.log_softmax, jax.nn.log_softmax),
        (jaxsce.softmax, jax.nn.softmax),
    ):
        g = jax.grad(lambda x, f=ours: jnp.sum(jnp.sin(f(x))))(z)
        g_ref = jax.grad(lambda x, f=theirs: jnp.sum(jnp.sin(f(x))))(z)
        np.testing.assert_allclose(g, g_ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("num_classes", [10, 100, 1000])
@pytest.mark.parametrize("scale", SCALES)
def test_gradients_within_a_few_ulp_of_mpmath(columns, scale, num_classes):
    """Gradients whose rows' sums go by columns, against mpmath.

    ``grad logsumexp = p`` within softmax's 6 ulp, and the loss's ``p -
    onehot(y)`` within 4 ulp on its general path (a mask), whose backward
    pass reads the forward pass's column sum.
    """
    z, top = _confident_rows(num_classes, scale, seed=int(abs(scale)) + 1)
    p_ref = np.stack([softmax_mp(r) for r in z])
    g = jax.jit(jax.grad(lambda x: jnp.sum(jaxsce.logsumexp(x))))(z)
    assert ulp_error(g, p_ref).max() <= 6
    if scale in (-17.5, 0.0):  # the plain exp(z - lse) rounds z - lse: about 30 ulp here
        plain = jax.grad(lambda x: jnp.sum(jax.nn.logsumexp(x, axis=-1)))(jnp.asarray(z))
        assert ulp_error(plain, p_ref).max() > 6
    mask = np.ones(z.shape, bool)
    for labels in (top, (top + 1) % num_classes):
        ref = np.stack([integer_ce_mp(r, int(y))[1] for r, y in zip(z, labels)])
        loss = lambda x, y=labels: jnp.sum(CE(x, y, where=mask))  # noqa: E731
        assert ulp_error(jax.jit(jax.grad(loss))(z), ref).max() <= 4


def _kernels(f, *args):
    """Kernels (fusions) in the optimised program of ``jit(f)``."""
    entry = jax.jit(f).lower(*args).compile().as_text().split("ENTRY")[1]
    return sum(" fusion(" in line for line in entry.splitlines())


def test_a_sum_of_columns_is_computed_once(monkeypatch):
    """Read by several kernels, a column sum is still one kernel (``computed_once``).

    Without its division the loss, a forward + backward pass and a row in
    blocks, and without its select a reduction of ``log_softmax``, get a
    kernel per column: the count below fails on either (32 columns).
    """
    z = jnp.asarray(np.random.default_rng(0).normal(size=(8192, 32)).astype(np.float32))
    y, c = jnp.zeros(8192, jnp.int32), z[::-1]
    long_rows = jnp.asarray(np.random.default_rng(1).normal(size=(1024, 1000)).astype(np.float32))
    programs = {
        "loss": (CE, z, y),
        "loss and lse": (lambda z, y: CE(z, y, return_aux=True), z, y),
        "value and grad": (jax.value_and_grad(lambda z: jaxsce.logsumexp(z) @ c[:, 0]), z),
        "sum of log_softmax": (lambda z: jnp.sum(jaxsce.log_softmax(z) * c), z),
        "blocks": (jaxsce.logsumexp, long_rows),  # 8 blocks of 125 columns
    }

    def counts():
        jax.clear_caches()
        return {name: _kernels(*p) for name, p in programs.items()}

    assert max(counts().values()) <= 16
    for module in (_logsumexp, jaxsce._cross_entropy):
        monkeypatch.setattr(module, "computed_once", lambda x, _: jnp.where(x == x, x, jnp.nan))
    no_division = counts()
    assert no_division["loss"] > 32 and no_division["value and grad"] > 32
    assert no_division["blocks"] > 32
    for module in (_logsumexp, jaxsce._cross_entropy):
        monkeypatch.setattr(module, "computed_once", lambda x, finite: x / (finite * 0 + 1))
    no_select = counts()
    assert no_select["loss"] > 32 and no_select["sum of log_softmax"] > 32
    jax.clear_caches()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_logits_get_no_float32_copy(dtype):
    """Up to ``HALF_COLUMNS`` classes by columns, each column upcast in the loop.

    XLA's CPU backend slices 16-bit logits out of their float32 upcast, which
    its fusion copies into the loop for up to 15 slices and past that writes
    out: the measure below sees that copy in a plain sum of 16 columns.
    (float16 rows on the row path do hold float32 copies, which XLA makes
    for its reductions; only bfloat16 is checked past the limit.)
    """
    limit = _logsumexp.HALF_COLUMNS
    assert _logsumexp.by_columns(jnp.zeros((4096, limit), dtype))
    assert not _logsumexp.by_columns(jnp.zeros((4096, limit + 1), dtype))
    for c in (limit, limit + 1) if dtype == jnp.bfloat16 else (limit,):
        z = jnp.zeros((4096, c), dtype)
        copy = 4 * z.size  # bytes of a float32 copy
        for f in (jaxsce.logsumexp, jaxsce.log_softmax, jaxsce.softmax):
            compiled = jax.jit(f).lower(z).compile()
            assert compiled.memory_analysis().temp_size_in_bytes < copy / 2, (c, f)
            assert (" slice(" in compiled.as_text()) == (c == limit)
    if dtype == jnp.bfloat16:
        z = jnp.zeros((4096, limit + 1), dtype)
        slices = lambda z: sum(z[:, k].astype(jnp.float32) for k in range(limit + 1))  # noqa: E731
        temp = jax.jit(slices).lower(z).compile().memory_analysis().temp_size_in_bytes
        assert temp >= 4 * z.size


@pytest.mark.parametrize("scale", [-40.0, 0.0, 100.0, 1e3])
def test_bfloat16_rows_by_columns_round_once(columns, scale):
    """bfloat16 by columns: lse, p, log p_top, the loss and its gradient within half an ulp.

    Computed in float32 and rounded once: the error is the final rounding's
    (at most 2^-8 of the value) plus float32's few ulp.
    """
    z, top = _confident_rows(10, scale, seed=7)
    z = np.asarray(jnp.asarray(z).astype(jnp.bfloat16).astype(jnp.float32))  # exact bf16 values
    zb = jnp.asarray(z).astype(jnp.bfloat16)
    rows = np.arange(len(z))
    lse_ref = np.array([lse_mp(r) for r in z])  # mpmath numbers: z - lse is exact
    p_ref = np.stack([softmax_mp(r) for r in z])
    labels = (top + 1) % z.shape[1]
    ce_ref = [integer_ce_mp(r, int(y)) for r, y in zip(z, labels)]
    grad = jax.jit(jax.grad(lambda z: jnp.sum(CE(z, labels))))(zb)  # p - onehot(y)
    for got, ref in (
        (jaxsce.logsumexp(zb), lse_ref),
        (jaxsce.softmax(zb), p_ref),
        (jaxsce.log_softmax(zb)[rows, top], z[rows, top] - lse_ref),
        (jax.jit(CE)(zb, labels), [loss for loss, _ in ce_ref]),
        (grad, np.stack([g for _, g in ce_ref])),
    ):
        got = np.asarray(got.astype(jnp.float32), np.float64)
        ref = np.asarray(ref, np.float64)
        tiny = float(jnp.finfo(jnp.bfloat16).tiny)
        assert np.all(np.abs(got - ref) <= 2.0**-8 * 1.01 * np.abs(ref) + tiny)
