"""Strict JAX for every test: no implicit dtype or rank promotion.

float64 is turned on per test through the ``x64`` fixture and restored after.
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def _strict_jax():
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture
def x64():
    """Enables float64 for one test, then restores the previous setting."""
    with jax.enable_x64(True):
        yield
