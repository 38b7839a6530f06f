"""Tests of the vocab-parallel cross-entropies on 4 simulated CPU devices.

XLA's device count is fixed when JAX starts, so the checks run in a fresh
Python process (this file run as a script with ``XLA_FLAGS`` set) that prints
its measurements as JSON; the tests below assert on them.
"""

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

N, D, V, SHARDS = 12, 6, 40, 4


def _max_diff(a, b):
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)  # bad labels give NaN on both sides
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(diff), np.inf, diff)))


def _count_all_reduces(jitted, *args):
    hlo = jitted.lower(*args).compile().as_text()
    return len(re.findall(r"\sall-reduce(?:-start)?\(", hlo))  # tuple all-reduces count once


def _measure():
    """Runs on 4 devices; returns the numbers the tests check."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.sharding import PartitionSpec as P

    from jaxsce._cross_entropy import softmax_cross_entropy_with_integer_labels
    from jaxsce._linear import linear_softmax_cross_entropy
    from jaxsce._vocab_parallel import (
        vocab_parallel_linear_softmax_cross_entropy,
        vocab_parallel_softmax_cross_entropy,
    )

    assert jax.device_count() == SHARDS
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
    k = jax.random.split(jax.random.key(0), 5)
    hidden = jax.random.normal(k[0], (N, D))
    weight = jax.random.normal(k[1], (D, V))
    bias = jax.random.normal(k[2], (V,))
    labels = jax.random.randint(k[3], (N,), 0, V).at[0].set(-100)
    logits = jax.random.normal(k[4], (N, V)) * 3
    logits = logits.at[1, 7].set(45.0).at[1, 33].set(10.0)  # confident: label 7 on shard 0
    labels = labels.at[1].set(7)
    options = dict(ignore_index=-100, label_smoothing=0.1, z_loss=1e-3)
    out = {}

    def sharded(fn, in_specs, check_vma=True):
        return jax.jit(
            jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=check_vma)
        )

    # Cross-entropy of sharded logits against the single-device core loss.
    def vp_fn(z, y, **opts):
        return vocab_parallel_softmax_cross_entropy(z, y, axis_name="vocab", **opts)

    def core_fn(z, y, **opts):
        return softmax_cross_entropy_with_integer_labels(z, y, **opts)

    vp_opts = sharded(functools.partial(vp_fn, **options), (P(None, "vocab"), P()))
    core_opts = jax.jit(functools.partial(core_fn, **options))
    out["logits_options_loss"] = _max_diff(vp_opts(logits, labels), core_opts(logits, labels))
    out["logits_options_grad"] = _max_diff(
        jax.grad(lambda z: jnp.sum(vp_opts(z, labels)))(logits),
        jax.grad(lambda z: jnp.sum(core_opts(z, labels)))(logits),
    )
    vp = sharded(vp_fn, (P(None, "vocab"), P()))
    plain_labels = labels.at[0].set(3)
    out["logits_plain_loss"] = _max_diff(vp(logits, plain_labels), core_fn(logits, plain_labels))
    out["confident_row"] = [float(v) for v in logits[1]]
    out["confident_label"] = int(labels[1])
    out["confident_loss"] = float(vp(logits, labels)[1])
    out["logits_forward_all_reduces"] = _count_all_reduces(vp, logits, labels)
    out["logits_value_and_grad_all_reduces"] = _count_all_reduces(
        jax.jit(jax.value_and_grad(lambda z: jnp.mean(vp(z, labels)))), logits
    )

    # The fused linear version, weight and bias sharded by columns.
    def vpl_fn(h, w, b, y):
        return vocab_parallel_linear_softmax_cross_entropy(
            h, w, y, local_bias=b, axis_name="vocab", chunk_size=4, **options
        )

    vpl = sharded(vpl_fn, (P(), P(None, "vocab"), P("vocab"), P()))
    single = jax.jit(
        lambda h, w, b, y: linear_softmax_cross_entropy(h, w, y, bias=b, chunk_size=4, **options)
    )
    out["linear_loss"] = _max_diff(
        vpl(hidden, weight, bias, labels), single(hidden, weight, bias, labels)
    )
    grads = [
        jax.grad(lambda h, w, b, f=f: jnp.sum(f(h, w, b, labels)), (0, 1, 2))(hidden, weight, bias)
        for f in (vpl, single)
    ]
    out["linear_grads"] = max(_max_diff(a, b) for a, b in zip(*grads))
    out["linear_value_and_grad_all_reduces"] = _count_all_reduces(
        jax.jit(jax.value_and_grad(lambda h, w, b: jnp.mean(vpl(h, w, b, labels)), (0, 1, 2))),
        hidden,
        weight,
        bias,
    )

    # The count can fail: a textbook version (a separate sum per quantity, which XLA
    # combines) differentiated by autodiff through the collectives without vma checks.
    def textbook(z, y):
        m = lax.pmax(lax.stop_gradient(jnp.max(z, axis=-1)), "vocab")
        s = lax.psum(jnp.sum(jnp.exp(z - m[:, None]), axis=-1), "vocab")
        cols = lax.axis_index("vocab") * z.shape[-1] + jnp.arange(z.shape[-1])
        zy = lax.psum(jnp.sum(jnp.where(cols[None, :] == y[:, None], z, 0.0), axis=-1), "vocab")
        return m + jnp.log(s) - zy

    tb = sharded(textbook, (P(None, "vocab"), P()), check_vma=False)
    out["textbook_value_and_grad_all_reduces"] = _count_all_reduces(
        jax.jit(jax.value_and_grad(lambda z: jnp.mean(tb(z, labels)))), logits
    )
    out.update(_meshes())
    out["array_options"] = _array_options_mesh()
    out["vmap_axis_name"] = _vmap_axis_name()
    out["property"] = _property()
    return out


def _plain_loss(logits, labels, ignore_index, eps, zeta, cap, reduction):
    """Single-device reference from the full logits (plain jnp; JAX differentiates it)."""
    import jax
    import jax.numpy as jnp

    z = logits if cap is None else cap * jnp.tanh(logits / cap)
    v = z.shape[-1]
    y = labels.astype(jnp.int32)
    lse = jax.nn.logsumexp(z, axis=-1)
    q = (1.0 - eps) * jax.nn.one_hot(y, v, dtype=z.dtype) + eps / v
    loss = jnp.sum(q * (lse[:, None] - z), axis=-1) + zeta * lse**2
    keep = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    loss = jnp.where(keep, loss, 0.0)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(keep).astype(loss.dtype)
    return loss


def _mesh_case(shape, check_vma, kind, method="auto", label_dtype="int32", **options):
    """Max |difference| of the loss and the gradients against the plain reference.

    ``shape`` is (data, vocab): hidden, logits and labels are sharded by rows
    over "data", the class axis over "vocab". The per-shard loss is summed over
    "data" (reduction "sum" or "mean" of the shard's rows, both sums).
    """
    import jax
    import numpy as np
    from jax import lax
    from jax.sharding import PartitionSpec as P

    from jaxsce._linear import linear_softmax_cross_entropy
    from jaxsce._vocab_parallel import (
        vocab_parallel_linear_softmax_cross_entropy,
        vocab_parallel_softmax_cross_entropy,
    )

    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(shape), ("data", "vocab"))
    k = jax.random.split(jax.random.key(1), 3)
    hidden = jax.random.normal(k[0], (N, D))
    weight = jax.random.normal(k[1], (D, V))
    labels = jax.random.randint(k[2], (N,), 0, V)
    ignore_index = options.get("ignore_index")
    if ignore_index is not None and np.iinfo(label_dtype).min <= ignore_index:
        labels = labels.at[::5].set(ignore_index)
    labels = labels.astype(label_dtype)
    opts = dict(options, reduction="sum")

    def local(h, w, y):
        if kind == "plain":  # the single-device loss inside a data-parallel shard_map
            return linear_softmax_cross_entropy(h, w, y, chunk_size=4, method=method, **opts)
        if kind == "linear":
            return vocab_parallel_linear_softmax_cross_entropy(
                h, w, y, axis_name="vocab", chunk_size=4, method=method, **opts
            )
        return vocab_parallel_softmax_cross_entropy(h @ w, y, axis_name="vocab", **opts)

    sharded = jax.jit(
        jax.shard_map(
            lambda h, w, y: lax.psum(local(h, w, y), "data"),
            mesh=mesh,
            in_specs=(P("data"), P() if kind == "plain" else P(None, "vocab"), P("data")),
            out_specs=P(),
            check_vma=check_vma,
        )
    )

    def plain(h, w):
        return _plain_loss(
            h @ w,
            labels,
            ignore_index,
            options.get("label_smoothing", 0.0),
            options.get("z_loss", 0.0),
            options.get("logit_softcap"),
            "sum",
        )

    got = jax.value_and_grad(lambda h, w: sharded(h, w, labels), (0, 1))(hidden, weight)
    want = jax.value_and_grad(plain, (0, 1))(hidden, weight)
    diffs = [_max_diff(got[0], want[0]) / float(np.abs(want[0]))]
    diffs += [_max_diff(a, b) / float(np.max(np.abs(b))) for a, b in zip(got[1], want[1])]
    return max(diffs)


def _meshes():
    """Every function and method on 2x2, 1x4 and 4x1 meshes, check_vma on and off."""
    options = dict(ignore_index=-100, label_smoothing=0.1, z_loss=1e-3)
    out = {}
    for shape in ((2, 2), (1, 4), (4, 1)):
        for check_vma in (True, False):
            for kind, method in (
                ("logits", "auto"),
                ("linear", "recompute"),
                ("linear", "precompute"),
                ("plain", "recompute"),
                ("plain", "precompute"),
            ):
                key = f"mesh {shape[0]}x{shape[1]} check_vma={check_vma} {kind} {method}"
                try:
                    out[key] = _mesh_case(shape, check_vma, kind, method, **options)
                except Exception as e:  # reported, and failed by the test
                    out[key] = f"{type(e).__name__}: {e}"[:500]
    return out


def _array_options_mesh():
    """Traced label_smoothing, z_loss, logit_softcap on a 2x2 mesh: loss and all gradients.

    The options are arguments of the jitted step (replicated, ``P()``); their
    cotangents are compared with autodiff of the plain loss, check_vma on and off.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.sharding import PartitionSpec as P

    from jaxsce._vocab_parallel import (
        vocab_parallel_linear_softmax_cross_entropy,
        vocab_parallel_softmax_cross_entropy,
    )

    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "vocab"))
    k = jax.random.split(jax.random.key(2), 3)
    hidden = jax.random.normal(k[0], (8, D))
    weight = jax.random.normal(k[1], (D, V))
    labels = jax.random.randint(k[2], (8,), 0, V).at[::3].set(-100)
    options = (jnp.float32(0.2), jnp.float32(1e-2), jnp.float32(3.0))

    def plain(h, w, eps, zeta, cap):
        return _plain_loss(h @ w, labels, -100, eps, zeta, cap, "sum")

    argnums = (0, 1, 2, 3, 4)
    want = jax.value_and_grad(plain, argnums)(hidden, weight, *options)
    out = {}
    for check_vma in (True, False):
        for kind in ("recompute", "precompute", "logits"):

            def local(h, w, y, eps, zeta, cap, kind=kind):
                kw = dict(
                    reduction="sum",
                    ignore_index=-100,
                    label_smoothing=eps,
                    z_loss=zeta,
                    logit_softcap=cap,
                )
                if kind == "logits":
                    return vocab_parallel_softmax_cross_entropy(h @ w, y, axis_name="vocab", **kw)
                return vocab_parallel_linear_softmax_cross_entropy(
                    h, w, y, axis_name="vocab", chunk_size=4, method=kind, **kw
                )

            sharded = jax.shard_map(
                lambda h, w, y, *o: lax.psum(local(h, w, y, *o), "data"),
                mesh=mesh,
                in_specs=(P("data"), P(None, "vocab"), P("data"), P(), P(), P()),
                out_specs=P(),
                check_vma=check_vma,
            )
            key = f"check_vma={check_vma} {kind}"
            step = jax.jit(jax.value_and_grad(lambda h, w, *o: sharded(h, w, labels, *o), argnums))
            try:
                got = step(hidden, weight, *options)
            except Exception as e:  # reported, and failed by the test
                out[key] = f"{type(e).__name__}: {e}"[:500]
                continue
            diffs = [_max_diff(got[0], want[0]) / float(np.abs(want[0]))]
            diffs += [_max_diff(a, b) / float(np.max(np.abs(b))) for a, b in zip(got[1], want[1])]
            out[key] = max(diffs)
    return out


def _vmap_axis_name():
    """Under vmap(axis_name=...): values right; gradients a clear error (not a wrong number)."""
    import jax
    import jax.numpy as jnp

    from jaxsce._vocab_parallel import (
        vocab_parallel_linear_softmax_cross_entropy,
        vocab_parallel_softmax_cross_entropy,
    )

    k = jax.random.split(jax.random.key(2), 3)
    hidden = jax.random.normal(k[0], (N, D))
    weight = jax.random.normal(k[1], (D, V))
    labels = jax.random.randint(k[2], (N,), 0, V)
    shards = weight.reshape(D, SHARDS, V // SHARDS).transpose(1, 0, 2)
    out = {"value": 0.0, "errors": []}
    want = _plain_loss(hidden @ weight, labels, None, 0.0, 0.0, None, "sum")
    for fn in ("linear", "logits"):

        def total(h, w, fn=fn):
            def one(w_s):
                if fn == "linear":
                    return vocab_parallel_linear_softmax_cross_entropy(
                        h, w_s, labels, axis_name="s", reduction="sum", chunk_size=4
                    )
                return vocab_parallel_softmax_cross_entropy(
                    h @ w_s, labels, axis_name="s", reduction="sum"
                )

            return jax.vmap(one, axis_name="s")(w)

        values = total(hidden, shards)
        out["value"] = max(out["value"], _max_diff(values, jnp.full((SHARDS,), want)))
        try:
            jax.grad(lambda w: total(hidden, w)[0])(shards)
            out["errors"].append(None)
        except ValueError as e:
            out["errors"].append(str(e))
    return out


def _property():
    """Hypothesis: meshes x check_vma x label dtypes x options x functions, few examples."""
    import json as _json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    seen = []

    @settings(max_examples=10, deadline=None, database=None, derandomize=True)
    @given(
        shape=st.sampled_from([(2, 2), (1, 4), (4, 1)]),
        check_vma=st.booleans(),
        kind=st.sampled_from(["logits", "linear"]),
        method=st.sampled_from(["auto", "recompute", "precompute"]),
        label_dtype=st.sampled_from(["int8", "uint8", "int16", "uint16", "int32", "uint32"]),
        ignore_index=st.sampled_from([None, -100, 3]),
        label_smoothing=st.sampled_from([0.0, 0.2]),
        z_loss=st.sampled_from([0.0, 1e-3]),
        logit_softcap=st.sampled_from([None, 4.0]),
    )
    def check(shape, check_vma, kind, method, label_dtype, **options):
        diff = _mesh_case(shape, check_vma, kind, method, label_dtype, **options)
        case = dict(
            shape=shape,
            check_vma=check_vma,
            kind=kind,
            method=method,
            label_dtype=label_dtype,
            **options,
        )
        seen.append(case)
        assert diff <= 1e-5, _json.dumps(dict(case, diff=diff))

    try:
        check()
    except AssertionError as e:
        return {"failure": str(e)[:1000], "examples": len(seen)}
    return {"failure": None, "examples": len(seen)}


@pytest.fixture(scope="module")
def measured():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-W", "error", os.path.abspath(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_logits_match_single_device(measured):
    for key in ("logits_plain_loss", "logits_options_loss", "logits_options_grad"):
        assert measured[key] <= 1e-6, (key, measured[key])


def test_confident_loss_within_a_few_ulp(measured):
    from tests._references import integer_ce_mp, ulp_error

    ref, _ = integer_ce_mp(
        np.asarray(measured["confident_row"], np.float32), measured["confident_label"]
    )
    assert ref < 1e-14  # log1p(rest) regime: 1 + rest rounds to 1 in float32
    assert ulp_error(measured["confident_loss"], ref) <= 4


def test_linear_matches_single_device(measured):
    assert measured["linear_loss"] <= 1e-6
    assert measured["linear_grads"] <= 1e-6


def test_all_reduce_counts(measured):
    # Forward: a max and one stacked sum; backward for the logits: nothing.
    assert measured["logits_forward_all_reduces"] == 2
    assert measured["logits_value_and_grad_all_reduces"] == 2
    # The linear version adds one N x D sum for the gradient of hidden.
    assert measured["linear_value_and_grad_all_reduces"] == 3
    # The count can fail: the textbook formulation needs more.
    assert measured["textbook_value_and_grad_all_reduces"] > 2


def test_every_mesh_and_check_vma_setting(measured):
    """2x2, 1x4 and 4x1 (data x vocab) meshes, check_vma on and off: right gradients.

    Today's code before this test crashed on the 2-D mesh (fori_loop carry
    types) and gave 0.25x / 0.5x gradients with check_vma=False.
    """
    cases = {k: v for k, v in measured.items() if k.startswith("mesh ")}
    assert len(cases) == 30
    for key, value in cases.items():
        assert isinstance(value, float), (key, value)
        assert value <= 1e-5, (key, value)


def test_array_options_on_a_2x2_mesh(measured):
    """Traced options in shard_map: true gradients for them too (today: an error)."""
    cases = measured["array_options"]
    assert len(cases) == 6
    for key, value in cases.items():
        assert isinstance(value, float), (key, value)
        assert value <= 1e-5, (key, value)


def test_vmap_axis_name(measured):
    assert measured["vmap_axis_name"]["value"] <= 1e-4
    for message in measured["vmap_axis_name"]["errors"]:
        assert "jax.vmap(axis_name=...)" in message and "shard_map" in message


def test_property_against_the_single_device_loss(measured):
    assert measured["property"]["failure"] is None, measured["property"]
    assert measured["property"]["examples"] >= 10


if __name__ == "__main__":
    print(json.dumps(_measure()))
