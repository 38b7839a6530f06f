"""The package as a new user meets it: its public names, and an import from a bare checkout.

The checkout test copies ``jaxsce/`` to a temporary folder and imports it in a
fresh interpreter that sees only the standard library, that copy and jax with
its own dependencies: no installed jaxsce (no metadata), no sympy.
"""

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import jaxsce

ROOT = Path(__file__).resolve().parent.parent


def _documented_api() -> set[str]:
    """The names in README's API table: ``| `name(...)` | what |`` rows."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## API\n", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z_]+)", section, flags=re.MULTILINE))


def test_dir_lists_only_the_documented_public_names():
    public = {name for name in dir(jaxsce) if not name.startswith("_")}
    documented = _documented_api()
    assert len(documented) >= 10  # the table was found and read
    assert public == documented
    assert "importlib" not in dir(jaxsce)


def _closure(dist: str) -> set[str]:
    """``dist`` and every distribution it requires (extras left out), recursively."""
    found, todo = set(), [dist]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        found.add(name)
        for req in importlib.metadata.requires(name) or []:
            if "extra ==" not in req:
                todo.append(re.match(r"[A-Za-z0-9_.-]+", req).group(0))
    return found


def _site_with_only_jax(folder: Path) -> Path:
    """A folder of links to the installed files of jax and its requirements, nothing else."""
    folder.mkdir()
    for name in _closure("jax"):
        dist = importlib.metadata.distribution(name)
        for top in {Path(f).parts[0] for f in dist.files or []}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists() and ".." not in top:
                (folder / top).symlink_to(source)
    return folder


PROBE = """
import importlib.metadata, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
found = {}
try:
    importlib.metadata.version("jaxsce")
    found["metadata"] = True
except importlib.metadata.PackageNotFoundError:
    found["metadata"] = False
try:
    import sympy
    found["sympy"] = True
except ImportError:
    found["sympy"] = False
try:
    import jaxsce
    found["version"] = jaxsce.__version__
    found["file"] = jaxsce.__file__
    found["loss"] = float(jaxsce.softmax_cross_entropy_with_integer_labels(
        jaxsce.log_softmax(__import__("jax.numpy").numpy.zeros(4)), 0))
    found["sympy_loaded"] = "sympy" in sys.modules
except Exception as e:
    found["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(found))
"""


def _probe(checkout: Path, site: Path) -> dict:
    # -I: no PYTHONPATH, no user site, no current folder; -S: no site-packages.
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(checkout), str(site)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_imports_from_a_checkout_that_was_never_installed(tmp_path):
    checkout = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "jaxsce", checkout / "jaxsce", ignore=ignore)
    site = _site_with_only_jax(tmp_path / "site")
    found = _probe(checkout, site)
    # The environment is what it claims: no jaxsce metadata, no sympy.
    assert found["metadata"] is False and found["sympy"] is False
    assert "error" not in found, found["error"]
    assert Path(found["file"]).parent == checkout / "jaxsce"
    assert found["version"] == jaxsce.__version__
    assert abs(found["loss"] - 1.3862943611198906) < 1e-6  # log 4
    assert found["sympy_loaded"] is False

    # The probe can fail: the version read from installed metadata, as before, does.
    init = checkout / "jaxsce" / "__init__.py"
    old = 'import importlib.metadata\n__version__ = importlib.metadata.version("jaxsce")\n'
    init.write_text(init.read_text() + old)
    assert "PackageNotFoundError" in _probe(checkout, site)["error"]


def test_installed_metadata_matches_the_version_in_the_source():
    try:
        installed = importlib.metadata.version("jaxsce")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("jaxsce is not installed: no metadata to compare")
    assert installed == jaxsce.__version__
