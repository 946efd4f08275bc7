"""refdcn: the reference implementation of deformable convolution (DCNv1 and DCNv2).

>>> import refdcn
>>> refdcn.backends.available()          # doctest: +SKIP
['reference', 'numpy', 'numba', 'cython']

Public API
----------
deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
              *, backend="auto")
deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                       dilation=1, mask=None, *, backend="auto", convention="torchvision")
    -> Gradients(input, offset, mask, weight, bias)
backends.available(), backends.unavailable()
dcnv3(input, offset, mask, kernel_h, kernel_w, ...), dcnv4(input, offset_mask, ...) and their
    *_backward: DCNv3/DCNv4, channels-last (refdcn.dcnv34)
set_column_memory(nbytes), column_memory()

Where things live: ``bilinear`` (the scalar math, written once), ``geometry``
(shapes and checks), ``reference/loops`` (the explicit-loop reference),
``backends/numpy_cpu`` (vectorised NumPy im2col), ``driver`` (im2col + GEMM
over tiles of images, for every im2col backend), ``backends/`` (registry and compiled backends).
"""

from . import backends
from .api import CONVENTIONS, Gradients, deform_conv2d, deform_conv2d_backward
from .driver import column_memory, set_column_memory
from .dcnv34 import dcnv3, dcnv3_backward, dcnv4, dcnv4_backward
from .geometry import output_size

__version__ = "0.1.0"

__all__ = ["deform_conv2d", "deform_conv2d_backward", "Gradients", "CONVENTIONS", "backends",
           "output_size", "column_memory", "set_column_memory", "__version__",
           "dcnv3", "dcnv3_backward", "dcnv4", "dcnv4_backward"]
