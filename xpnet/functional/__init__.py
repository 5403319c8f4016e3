"""Pure array math: every forward and its hand-written backward, for NumPy and CuPy alike.

Conventions shared by every function here:

* Image arrays are NCHW-shaped at the interface, as in PyTorch. Their memory may be in any order;
  what these functions return is channels-last in memory (an ``(N, H, W, C)`` buffer viewed as
  ``(N, C, H, W)``), which keeps the channel axis contiguous for the GEMMs and the per-channel
  reductions. Elementwise ufuncs preserve that order, so it flows through a network untouched.
* A ``*_forward`` function returns ``(y, cache)``; the matching ``*_backward`` takes ``(dy, cache)``
  and returns the input gradient (and parameter gradients where there are parameters).
* Nothing here allocates in float64 or holds state; the dtype is the caller's.
"""

from xpnet.functional.activation import relu_backward, relu_forward
from xpnet.functional.conv import col2im, conv2d_backward, conv2d_forward, im2col
from xpnet.functional.dropout import dropout_backward, dropout_forward
from xpnet.functional.fused import (
    conv_bn_relu_backward,
    conv_bn_relu_eval_forward,
    conv_bn_relu_train_forward,
)
from xpnet.functional.fused_bias import conv_bias_relu_backward, conv_bias_relu_forward
from xpnet.functional.layout import from_rows, to_rows
from xpnet.functional.linear import linear_backward, linear_forward
from xpnet.functional.loss import (
    LabelError,
    check_labels,
    cross_entropy_backward,
    cross_entropy_forward,
    cross_entropy_sums,
    softmax,
)
from xpnet.functional.normalization import (
    batchnorm_backward,
    batchnorm_eval_forward,
    batchnorm_train_forward,
    sums_over_ranks,
)
from xpnet.functional.workspace import Workspace
from xpnet.functional.pooling import TIES as MAXPOOL_TIES
from xpnet.functional.pooling import (
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool_backward,
    global_avgpool_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "MAXPOOL_TIES",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batchnorm_backward",
    "batchnorm_eval_forward",
    "batchnorm_train_forward",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "conv_bias_relu_backward",
    "conv_bias_relu_forward",
    "conv_bn_relu_backward",
    "conv_bn_relu_eval_forward",
    "conv_bn_relu_train_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "LabelError",
    "check_labels",
    "cross_entropy_sums",
    "softmax",
    "dropout_backward",
    "dropout_forward",
    "from_rows",
    "global_avgpool_backward",
    "global_avgpool_forward",
    "im2col",
    "linear_backward",
    "linear_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "relu_backward",
    "relu_forward",
    "sums_over_ranks",
    "to_rows",
    "Workspace",
]
