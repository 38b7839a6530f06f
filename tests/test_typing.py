"""The library type-checks clean under mypy (configured in pyproject.toml)."""

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is not installed")

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_clean():
    out, err, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "jaxsce")]
    )
    assert status == 0, out + err
