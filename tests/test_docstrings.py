"""The Examples in the public docstrings run and print what they say."""

import doctest

import pytest

import jaxsce
from jaxsce import _checks, _cross_entropy, _logsumexp, _sigmoid

MODULES = [_logsumexp, _cross_entropy, _sigmoid, _checks]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, extraglobs={"jaxsce": jaxsce})
    assert result.attempted > 0
    assert result.failed == 0
