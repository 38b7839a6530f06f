"""logsumexp, softmax and log_softmax against jax.nn, mpmath and their edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsce
from jaxsce._logsumexp import max_and_rest
from tests._references import lse_mp, softmax_mp, ulp_error

FUNCS = {
    "logsumexp": (jaxsce.logsumexp, lambda x, axis=-1: jax.nn.logsumexp(x, axis=axis)),
    "softmax": (jaxsce.softmax, jax.nn.softmax),
    "log_softmax": (jaxsce.log_softmax, jax.nn.log_softmax),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TOL = {jnp.float32: 1e-6, jnp.bfloat16: 2e-2, jnp.float16: 2e-3, jnp.float64: 1e-13}


def _x(shape, dtype, seed=0):
    return (3 * jax.random.normal(jax.random.PRNGKey(seed), shape)).astype(dtype)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("axis", [-1, 0, (0, 2)], ids=["last", "first", "tuple"])
def test_matches_jax_nn(name, dtype, axis):
    ours, theirs = FUNCS[name]
    x = _x((3, 4, 5), dtype)
    got = ours(x, axis=axis)
    assert got.dtype == dtype
    want = theirs(x.astype(jnp.float32), axis=axis)
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("name", FUNCS)
def test_float64(name, x64):
    ours, theirs = FUNCS[name]
    x = _x((4, 6), jnp.float64)
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-13, atol=1e-13)
    g = jax.grad(lambda x: jnp.sum(jnp.sin(ours(x))))(x)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(theirs(x))))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("transform", ["jit", "vmap", "grad", "jacfwd", "hessian"])
def test_transforms(name, transform):
    ours, theirs = FUNCS[name]
    x = _x((3, 5), jnp.float32)

    def scalar(f):
        return lambda x: jnp.sum(jnp.sin(f(x)))

    if transform == "jit":
        got, want = jax.jit(ours)(x), theirs(x)
    elif transform == "vmap":
        got, want = jax.vmap(ours)(x), ours(x)
    elif transform == "grad":
        got, want = jax.grad(scalar(ours))(x), jax.grad(scalar(theirs))(x)
    elif transform == "jacfwd":
        got, want = jax.jacfwd(ours)(x[0]), jax.jacfwd(theirs)(x[0])
    else:
        got, want = jax.hessian(scalar(ours))(x[0]), jax.hessian(scalar(theirs))(x[0])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_ties_keep_exact_derivatives(x64):
    # Two equal largest logits: the sum leaves both out and adds back 1; the
    # Jacobian and Hessian must still be those of the plain formula.
    x = jnp.array([1.0, 1.0, 0.0, -2.0])
    np.testing.assert_allclose(
        jax.jacfwd(jaxsce.softmax)(x), jax.jacfwd(jax.nn.softmax)(x), atol=1e-15
    )
    np.testing.assert_allclose(
        jax.hessian(jaxsce.logsumexp)(x), jax.hessian(jax.nn.logsumexp)(x), atol=1e-15
    )
    p = jax.nn.softmax(x)
    np.testing.assert_allclose(
        jax.hessian(jaxsce.logsumexp)(x), jnp.diag(p) - jnp.outer(p, p), atol=1e-15
    )


def test_where_mask():
    x = _x((2, 5), jnp.float32)
    where = jnp.array([[True, False, True, True, False], [True] * 5])
    p = jaxsce.softmax(x, where=where)
    assert np.all(p[0, ~where[0]] == 0)
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(p, jax.nn.softmax(x, where=where), rtol=1e-6, atol=1e-7)
    lp = jaxsce.log_softmax(x, where=where)
    assert np.all(lp[0, ~where[0]] == -np.inf)
    np.testing.assert_allclose(
        jaxsce.logsumexp(x, where=where), jax.nn.logsumexp(x, axis=-1, where=where), rtol=1e-6
    )
    g = jax.grad(lambda x: jnp.sum(jaxsce.logsumexp(x, where=where)))(x)
    assert np.all(g[0, ~where[0]] == 0)


@pytest.mark.parametrize("name", FUNCS)
def test_rows_without_valid_class_give_no_nan(name):
    ours, _ = FUNCS[name]
    x = jnp.array([[-jnp.inf] * 3, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    where = jnp.array([[True] * 3, [True] * 3, [False] * 3])
    out = ours(x, where=where)
    want = {"logsumexp": -np.inf, "softmax": 0.0, "log_softmax": -np.inf}[name]
    assert np.all(out[0] == want) and np.all(out[2] == want)
    assert not np.any(np.isnan(out))
    for f in (jax.grad, jax.hessian):
        d = f(
            lambda x: jnp.sum(
                jnp.where(jnp.isfinite(ours(x, where=where)), ours(x, where=where), 0)
            )
        )(x)
        assert not np.any(np.isnan(d)), f


def test_nan_and_posinf_propagate():
    for bad in (jnp.nan, jnp.inf):
        x = jnp.array([0.0, bad, 1.0])
        assert np.isnan(jaxsce.logsumexp(x))
        assert np.all(np.isnan(jaxsce.softmax(x)))
        assert np.all(np.isnan(jaxsce.log_softmax(x)))


def test_neg_inf_entries_are_zero_probability():
    x = jnp.array([0.0, -jnp.inf, 1.0])
    p = jaxsce.softmax(x)
    assert p[1] == 0
    g = jax.grad(lambda x: jaxsce.logsumexp(x))(x)
    assert g[1] == 0 and np.all(np.isfinite(g))


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e4])
def test_accuracy_against_mpmath(scale):
    """log_softmax of the largest logit and logsumexp stay within a few ulp."""
    rng = np.random.default_rng(0)
    rows = []
    for margin in (0.0, 5.0, 20.0, 40.0):
        z = (scale + rng.uniform(-10, 0, 50)).astype(np.float32)
        z[7] = np.float32(z.max() + margin)
        rows.append(z)
    z = np.stack(rows)
    lse = jaxsce.logsumexp(z)
    lse_ref = np.array([lse_mp(r) for r in z])
    assert ulp_error(lse, lse_ref).max() <= 1
    lp_top = jaxsce.log_softmax(z)[:, 7]
    lp_ref = np.array([float(r[7]) - lse_mp(r) for r in z])
    assert ulp_error(lp_top, lp_ref).max() <= 4
    # The bound rejects the textbook formula, which rounds 1 + tiny to 1.
    naive = z[:, 7] - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1)) - z.max(-1)
    assert ulp_error(naive.astype(np.float32), lp_ref).max() > 100


def test_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        jaxsce.softmax(jnp.arange(3))
    with pytest.raises(TypeError, match="boolean"):
        jaxsce.softmax(jnp.ones(3), where=jnp.ones(3))
    with pytest.raises(ValueError, match="does not broadcast"):
        jaxsce.logsumexp(jnp.ones((2, 3)), where=jnp.ones((4,), bool))
    with pytest.raises(ValueError, match="out of range"):
        jaxsce.log_softmax(jnp.ones((2, 3)), axis=2)


# -- the blocked sum (rows longer than one block) ------------------------------


def _blocked_lse(z, block):
    s = max_and_rest(z, block=block)
    return jnp.where(s.empty, -jnp.inf, s.shift + jnp.log1p(s.rest))


@pytest.mark.parametrize(
    "case", ["random", "tie-in-block", "tie-across-blocks", "neg-inf-row", "masked", "nan"]
)
def test_blocked_rest_equals_one_block(x64, case):
    z = 3 * jax.random.normal(jax.random.PRNGKey(3), (4, 13), jnp.float64)
    if case == "tie-in-block":
        z = z.at[:, 5].set(10.0).at[:, 6].set(10.0)
    elif case == "tie-across-blocks":
        z = z.at[:, 1].set(10.0).at[:, 12].set(10.0)
    elif case == "neg-inf-row":
        z = z.at[1].set(-jnp.inf).at[2, ::2].set(-jnp.inf)
    elif case == "masked":
        z = jnp.where(jnp.arange(13) % 3 == 0, -jnp.inf, z)
    elif case == "nan":
        z = z.at[0, 9].set(jnp.nan)
    one, blocked = max_and_rest(z, block=64), max_and_rest(z, block=4)
    np.testing.assert_allclose(blocked.rest, one.rest, rtol=1e-14)
    np.testing.assert_array_equal(blocked.shift, one.shift)
    np.testing.assert_array_equal(blocked.empty, one.empty)
    if case == "nan":
        assert np.isnan(blocked.rest[0]) and np.all(np.isfinite(blocked.rest[1:]))
    for row in range(4):
        if case in ("nan", "neg-inf-row") and row < 2:
            continue
        h = jax.hessian(lambda z: _blocked_lse(z, 4))(z[row])
        h_ref = jax.hessian(jax.nn.logsumexp)(z[row])
        np.testing.assert_allclose(h, h_ref, atol=1e-14)


def test_blocked_path_through_the_public_functions():
    # 2500 classes: three blocks of 1024, the last one partly outside the row.
    z = 3 * jax.random.normal(jax.random.PRNGKey(4), (3, 2500))
    z = z.at[0, 2400].set(30.0).at[1, 3].set(30.0).at[1, 2000].set(30.0)
    np.testing.assert_allclose(jaxsce.softmax(z), jax.nn.softmax(z), rtol=2e-6, atol=1e-12)
    np.testing.assert_allclose(jaxsce.logsumexp(z), jax.nn.logsumexp(z, axis=-1), rtol=1e-6)
    g = jax.grad(lambda z: jnp.sum(jnp.sin(jaxsce.logsumexp(z))))(z)
    g_ref = jax.grad(lambda z: jnp.sum(jnp.sin(jax.nn.logsumexp(z, axis=-1))))(z)
    np.testing.assert_allclose(g, g_ref, rtol=2e-6, atol=1e-12)


@pytest.mark.parametrize("name", ["logsumexp", "softmax", "log_softmax"])
def test_blocked_path_gradient_costs_a_few_flops_per_logit(name):
    # 3000 classes take the blocked path. Autodiff through the blocked sums
    # and the gather of the top block cost about 1000 flops per logit (a
    # windowed transpose of the 1024-class blocks) and ran 100x slower than
    # jax.nn; the custom JVP of the rest is the plain sum's, a few flops.
    x = jnp.ones((8, 3000))
    fn = getattr(jaxsce, name)
    compiled = jax.jit(jax.grad(lambda x: jnp.sum(fn(x) ** 2))).lower(x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert cost["flops"] / x.size < 64


# -- logits of any finite size ------------------------------------------------

_F32_MAX = float(np.finfo(np.float32).max)


def _far_below(a):
    """The float32 just below ``a`` that is at least 300 under it (exp(-300) is 0)."""
    b = np.float32(a)
    while float(a) - float(b) < 300:
        b = np.nextafter(b, np.float32(-np.inf))
    return b


@pytest.mark.parametrize("a", [2.0**31, 3e9, 2.0**40, 1e30, 3e38, -(2.0**31), -3e9, -1e30, -3.4e38])
def test_huge_logits_give_exact_results(a):
    """Two logits 300 or more apart: the larger takes all the probability.

    At ``|a| >= 2^31`` today's ``a - 128`` rounds back to ``a``; a clamp there
    would make the row uniform (softmax 1/2, 1/2; loss log 2).
    """
    a = np.float32(a)
    b = _far_below(a)
    z = jnp.array([a, b])
    gap = np.float32(np.float64(b) - np.float64(a))  # b - a, rounded once
    np.testing.assert_array_equal(jaxsce.softmax(z), [1.0, 0.0])
    np.testing.assert_array_equal(jaxsce.log_softmax(z), [0.0, gap])
    assert jaxsce.logsumexp(z) == a
    for label, want_loss, want_grad in [(0, 0.0, [0.0, 0.0]), (1, -gap, [1.0, -1.0])]:
        loss, grad = jax.value_and_grad(jaxsce.softmax_cross_entropy_with_integer_labels)(
            z, jnp.array(label)
        )
        assert loss == want_loss and np.all(grad == np.array(want_grad, np.float32))
        onehot = jnp.eye(2, dtype=jnp.float32)[label]
        assert jaxsce.softmax_cross_entropy(z, onehot) == want_loss


@pytest.mark.parametrize("scale", [-10.0, 0.0, 30.0, 60.0, 100.0, 1000.0])
def test_softmax_within_a_few_ulp_of_mpmath(scale):
    """Every entry of confident rows, wherever the largest logit lies.

    The budget: XLA's ``exp``, the sum, the row's factor and the product.
    The plain shift (``jax.nn``, or the textbook formula in float32) rounds
    ``z - m`` first: about 30 ulp at a margin of 40 near 0.
    """
    rng = np.random.default_rng(0)
    rows = []
    for margin in (0.0, 5.0, 20.0, 40.0):
        for _ in range(3):
            z = (scale + rng.uniform(-10, 0, 50)).astype(np.float32)
            z[7] = np.float32(z.max() + margin)
            rows.append(z)
    z = np.stack(rows)
    ref = np.stack([softmax_mp(row) for row in z])
    assert ulp_error(jaxsce.softmax(z), ref).max() <= 6
    if abs(scale) <= 30:  # where z - m rounds
        assert ulp_error(jax.nn.softmax(z), ref).max() > 6


@pytest.mark.parametrize("m", [80.0, 96.0, 103.0, 112.0, 119.0, 144.0, 151.0])
def test_softmax_sums_1024_largest_terms_without_overflow(m):
    """A row of 1024 equal logits at the top of a band of the shift table.

    The sum of ``e^{z - a}`` is scaled once per row, so ``1024 e^{m - a}``
    must be finite: with ``m - a`` up to 87 (a table with 16 up to 103) it
    would overflow, and every ``p`` would come out 0.
    """
    z = jnp.full((2, 1024), m, jnp.float32).at[1, 0].add(1.0)
    p = np.asarray(jaxsce.softmax(z), np.float64)
    np.testing.assert_allclose(p[0], 1 / 1024, rtol=1e-6)
    top = np.e / (np.e + 1023)
    np.testing.assert_allclose(p[1], [top] + [top / np.e] * 1023, rtol=1e-6)


def test_masked_entries_at_the_most_negative_float():
    z = jnp.array([-_F32_MAX, 5.0, -jnp.inf])
    where = jnp.array([True, False, True])
    np.testing.assert_array_equal(jaxsce.softmax(z, where=where), [1.0, 0.0, 0.0])
    assert jaxsce.logsumexp(z, where=where) == -_F32_MAX
    assert jaxsce.softmax_cross_entropy_with_integer_labels(z, 0, where=where) == 0


def test_exact_shift_subtracts_exactly_on_every_logit_that_counts():
    """For largest logits m across float32's range and z in [m - 70, m], z - a is exact."""
    from jaxsce._logsumexp import exact_shift

    rng = np.random.default_rng(0)
    m = np.concatenate(
        [np.linspace(-300, 300, 60001), -np.logspace(0, 38, 400), np.logspace(0, 38, 400)]
    ).astype(np.float32)

    def inexact(a):
        count = 0
        for trial in range(8):
            z = (m.astype(np.float64) - 70 * rng.uniform(0, 1, m.shape) ** 2).astype(np.float32)
            if trial == 0:
                z = np.nextafter(m - np.float32(70), m)  # the lowest logit that counts
            z = np.minimum(z, m)
            d = (z - a).astype(np.float32)
            exact = d.astype(np.float64) == z.astype(np.float64) - a.astype(np.float64)
            # exp(z - a) normal where z counts, and 1024 terms below e^{m - a} <= e^80 summable
            counts = z.astype(np.float64) >= m.astype(np.float64) - 70
            in_range = ((d > -87.3) | ~counts) & (m.astype(np.float64) - a <= 80)
            count += int(np.sum(~(exact & in_range)))
        return count

    assert inexact(np.asarray(exact_shift(jnp.asarray(m)))) == 0
    assert inexact(m) > 1000  # the plain shift by m rounds
    assert inexact(np.zeros_like(m)) > 1000  # no shift overflows
    non_finite = jnp.array([np.nan, -np.inf, np.inf], np.float32)
    assert np.asarray(exact_shift(non_finite)).tolist() == [0, 0, 0]


def _temp_bytes(f, *args):
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_bfloat16_inputs_get_no_float32_copy():
    """16-bit logits are upcast inside each kernel that reads them, not as one float32 array."""
    n, c = 512, 1000  # one block per row (the blocked path of longer rows still copies)
    x = _x((n, c), jnp.bfloat16)
    w = _x((n,), jnp.float32, seed=1)
    copy = 4 * n * c  # bytes of a float32 copy of the logits

    def step(f, w):  # forward + backward of a weighted sum
        return jax.value_and_grad(lambda x: jnp.sum(f(x).astype(jnp.float32) * w))

    assert _temp_bytes(step(jaxsce.logsumexp, w), x) < copy / 4
    assert _temp_bytes(step(jaxsce.log_softmax, x.astype(jnp.float32)), x) < copy / 4
    assert _temp_bytes(jaxsce.log_softmax, x) < copy / 4
    # softmax's backward pass keeps p (float32), as jax.nn keeps its output.
    assert _temp_bytes(jaxsce.softmax, x) < copy / 4
    # The measure sees a copy: the same functions on an upcast, rescaled array.
    upcast = lambda x: jaxsce.logsumexp(x.astype(jnp.float32) * 1.5)  # noqa: E731
    assert _temp_bytes(step(upcast, w), x) >= copy
