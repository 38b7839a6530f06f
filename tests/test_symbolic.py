"""Tests of symbolic/: proofs hold, wrong formulas are refuted, three legs agree."""

import io
import re

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import symbolic
from symbolic import _check


@pytest.fixture(scope="module")
def derivations():
    return symbolic.derive_all()


def test_every_proof_holds(derivations):
    for dv in derivations:
        for proof in dv.proofs:
            assert proof, (dv.key, proof.name, proof.residual)


def test_every_wrong_formula_is_refuted(derivations):
    for dv in derivations:
        assert dv.rejected, f"{dv.key} has no refuted claim: its prover is untested"
        for proof in dv.rejected:
            assert not proof.holds and not proof.exact, (dv.key, proof.name)


def test_three_legs_agree(derivations, x64):
    # the masked y of the points and the plain formulations broadcast and mix bool masks
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        rows = _check.check_all(derivations)
    assert rows
    for row in rows:
        assert row.autodiff < 1e-12 and (row.fused is None or row.fused < 1e-12), row


def test_bridge_jit_vmap(derivations, x64):
    jac = {n: f for dv in derivations for n, f in dv.formulas.items()}["softmax_jacobian"].jax
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 7)) * 1e3)
    p = jax.nn.softmax(z)
    got = jax.jit(jax.vmap(jac))(p)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, jax.vmap(jax.jacrev(jax.nn.softmax))(z), atol=1e-13)


def test_check_grads_fused(x64):
    import jaxsce

    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(3, 5)))
    y = jnp.asarray(rng.random((3, 5)))
    # check_vjp's own random cotangents trip strict promotion inside jaxsce (see report).
    with jax.numpy_dtype_promotion("standard"):
        jax.test_util.check_grads(
            lambda v: jaxsce.softmax_cross_entropy(v, y, fused=True).sum(),
            (z,),
            order=2,
            modes=["rev"],
        )


def test_import_jaxsce_does_not_import_sympy():
    import subprocess
    import sys

    code = "import sys, jaxsce; assert 'sympy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_text_uses_the_seeds_notation(derivations):
    from symbolic import _render

    doc = _render.render_text(derivations)
    assert "∂p_i/∂z_j = (δ_ij - p_j)*p_i" in doc  # seed 001's Jacobian, as the seeds write it
    assert re.search(r"[A-Za-z]\[[a-z0-9]", doc) is None  # no p[i] indexing anywhere
    # An explicit matrix prints one bracketed row per line, its rows aligned.
    lines = doc.splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("J = ["))
    rows = lines[first : first + 2]
    assert rows[0].index("[") == rows[1].index("[") and len(rows[0]) == len(rows[1])


def test_latex_equations_parse(derivations):
    """Every equation of the LaTeX (and Markdown) output goes through a TeX math parser.

    matplotlib's mathtext parses a subset of TeX; it has no matrix environments, so
    those equations are checked for balance only. The parser rejects a broken formula.
    """
    from matplotlib import mathtext

    from symbolic import _render

    def parses(formula):
        try:
            mathtext.math_to_image(f"${formula}$", io.BytesIO(), format="png")
        except ValueError:
            return False
        return True

    assert not parses(r"\frac{p_{i}}{")  # the check can fail
    doc = _render.render_latex(derivations)
    assert doc.count(r"\begin{") == doc.count(r"\end{")
    equations = re.findall(r"\\begin\{equation\*\}\n(.*?)\n\\end\{equation\*\}", doc, re.S)
    plain = [e for e in equations if r"\begin{matrix}" not in e]
    assert len(plain) > 40
    assert [e for e in plain if not parses(e)] == []
    for e in equations:
        assert e.count("{") == e.count("}") and e.count(r"\left") == e.count(r"\right")
    markdown = _render.render_markdown(derivations)
    assert re.findall(r"\$\$\n(.*?)\n\$\$", markdown, re.S) == equations
