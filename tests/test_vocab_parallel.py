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
    return out


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


if __name__ == "__main__":
    print(json.dumps(_measure()))
