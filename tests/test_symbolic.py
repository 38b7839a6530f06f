"""Tests of symbolic/: proofs hold, wrong formulas are refuted, three legs agree."""

import io
import pathlib
import re
import subprocess
import sys

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
        if row.refuted:  # a wrong formula beside the right one: both legs reject it
            assert row.autodiff > 1e-3 and row.fused > 1e-3, row
        else:
            assert row.autodiff < 1e-12 and (row.fused is None or row.fused < 1e-12), row
    # Items 1-7 of issue 12: each algorithm is compared with the library's own function.
    names = " | ".join(row.name for row in rows if row.fused is not None)
    for item in ("1 rest", "1 lse", "1 1 - p_top", "2 fused", "3 merge at every split",
                 "3 merge associative", "3 merge with an empty", "4 shards combined",
                 "4 smoothing, global V", "4 REFUTED local V", "5 softcap", "6 scalar cotangent",
                 "6 REFUTED per-example", "7 entropy H", "7 entropy gradient"):
        assert item in names, item


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


def test_library_algorithms_are_proven_and_refuted(derivations):
    by_key = {dv.key: dv for dv in derivations}
    for key in ("normaliser", "fused", "merge", "shards", "softcap", "scaling", "entropy"):
        dv = by_key[key]
        assert dv.proofs and all(dv.proofs), key
        assert dv.rejected and not any(p.holds or p.exact for p in dv.rejected), key
    names = [p.name for p in by_key["shards"].rejected]
    assert any("Megatron-LM #737" in name for name in names)


def test_checker_rejects_a_wrong_library_formula(derivations, x64):
    """The comparison with the library can fail: a perturbed formula is caught."""
    from symbolic import _library

    f = {n: form.jax for dv in derivations for n, form in dv.formulas.items()}
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)))
    m, r, lse = _library.normaliser(z)
    np.testing.assert_allclose(f["lse_from_rest"](m, r), lse, rtol=1e-14)
    assert np.max(np.abs(f["lse_from_rest"](m, 1.01 * r) - lse)) > 1e-6


def test_text_and_markdown_witnesses(derivations):
    from symbolic import _render

    doc = _render.render_text(derivations)
    markdown = _render.render_markdown(derivations)
    assert "()" not in "".join(line for line in doc.splitlines() if "refuted" in line)
    assert "witness None" not in markdown and "witness: )" not in markdown
    assert "seed 0" not in doc and "seeds 0" not in doc
    assert "\u201cSoftmax和交叉熵\u201d (Softmax and cross-entropy" in doc
    # no equation printed twice in a row
    lines = [line.strip() for line in doc.splitlines()]
    repeats = [a for a, b in zip(lines, lines[1:], strict=False) if a == b and "=" in a]
    assert repeats == []


def test_latex_prose_math():
    from symbolic._render import latex_prose

    assert latex_prose("numerator e^{z_i} and sum_m e^{z_m}") == (
        "numerator $e^{z_{i}}$ and $\\sum_{m}$ $e^{z_{m}}$"
    )
    assert latex_prose("uses jaxsce._linear._combine_shards") == (
        "uses \\texttt{jaxsce.\\_linear.\\_combine\\_shards}"
    )


def test_latex_compiles(derivations, tmp_path):
    import shutil
    import subprocess

    from symbolic import _render

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base)")
    doc = _render.render_latex(derivations)
    for dv in derivations:  # every refutation of the text output is in the document
        for proof in dv.rejected:
            assert _render.latex_prose(proof.name) in doc, proof.name
    assert "\\^{}" not in doc
    (tmp_path / "doc.tex").write_text(doc, encoding="utf-8")
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    log = (tmp_path / "doc.log").read_text(errors="replace")
    widths = [float(w) for w in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide", log)]
    assert all(w < 25 for w in widths), widths  # the wide matrices are broken to fit


def test_derivations_survive_the_cache(derivations, x64):
    """``derive_all(cache=True)`` stores the derivations as a pickle: the round trip keeps
    every proof and every formula usable."""
    import pickle

    again = pickle.loads(pickle.dumps(derivations))
    assert [p.name for dv in again for p in dv.proofs] == [
        p.name for dv in derivations for p in dv.proofs
    ]
    assert all(dv.ok for dv in again)
    jac = {n: f for dv in again for n, f in dv.formulas.items()}["softmax_jacobian"].jax
    np.testing.assert_allclose(jac(jnp.full(3, 1 / 3))[0, 0], 2 / 9, rtol=1e-14)


def test_cached_derivations_print_the_steps_as_derived(derivations):
    """sympy re-evaluates an unpickled expression (``(δ - p) p (-y/p)`` comes back as
    ``-(δ - p) y``): the cache and the worker processes of ``python -m symbolic`` keep each
    derivation's rendering from before the pickle, so every format prints what was proven."""
    import pickle

    from symbolic import _render

    again = pickle.loads(pickle.dumps(derivations))
    for render in (_render.render_text, _render.render_markdown, _render.render_latex):
        assert render(again) == render(derivations)
    # Without the prerendered lines the copy would print re-evaluated steps.
    for dv in again:
        dv.rendered.clear()
    assert _render.render_text(again) != _render.render_text(derivations)


def test_cache_key_follows_the_sources(tmp_path, monkeypatch):
    from symbolic import _all

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = _all._cache_file()
    assert path.parent == tmp_path / "jaxsce-symbolic"
    assert path.name.endswith(".pickle") and len(path.stem) == 32


def test_precompute_refuses_per_example_cotangents(x64):
    """The refuted claim of the scaling derivation is why ``method="precompute"`` needs a
    scalar loss: the library must refuse per-example cotangents rather than scale."""
    from symbolic import _library

    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(4, 3)))
    weight = jnp.asarray(rng.normal(size=(3, 5)))
    labels = jnp.asarray([0, 1, 2, 3])
    if not _library.has_option(jaxsce_linear(), "method"):
        pytest.skip("linear_softmax_cross_entropy has no `method` yet")
    with pytest.raises(ValueError, match="precompute"):
        _library.linear_vjp(hidden, weight, labels, jnp.ones(4), method="precompute")


def jaxsce_linear():
    import jaxsce

    return jaxsce.linear_softmax_cross_entropy


def test_without_sympy_the_error_says_what_to_install():
    code = "import sys; sys.modules['sympy'] = None; import symbolic"
    root = pathlib.Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode != 0
    assert 'pip install -e ".[symbolic]"' in out.stderr
