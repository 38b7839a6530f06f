"""jaxsce: softmax and cross-entropy for JAX, with fused closed-form gradients."""

from jaxsce._checks import check_labels as check_labels
from jaxsce._cross_entropy import CrossEntropyAux as CrossEntropyAux
from jaxsce._cross_entropy import softmax_cross_entropy as softmax_cross_entropy
from jaxsce._cross_entropy import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from jaxsce._linear import LinearCrossEntropyAux as LinearCrossEntropyAux
from jaxsce._linear import linear_softmax_cross_entropy as linear_softmax_cross_entropy
from jaxsce._logsumexp import log_softmax as log_softmax
from jaxsce._logsumexp import logsumexp as logsumexp
from jaxsce._logsumexp import softmax as softmax
from jaxsce._sigmoid import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from jaxsce._vocab_parallel import (
    vocab_parallel_linear_softmax_cross_entropy as vocab_parallel_linear_softmax_cross_entropy,
)
from jaxsce._vocab_parallel import (
    vocab_parallel_softmax_cross_entropy as vocab_parallel_softmax_cross_entropy,
)

# The one place the version is written: pyproject.toml reads it from here, so a
# checkout that was never pip-installed imports too.
__version__ = "0.1.0"
