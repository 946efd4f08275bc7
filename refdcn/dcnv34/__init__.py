"""DCNv3 (InternImage, 2023) and DCNv4 (OpenGVLab, 2024): the modern deformable operators.

* :mod:`~refdcn.dcnv34.geometry` - layouts, tap order, argument checking;
* :mod:`~refdcn.dcnv34.api` - :func:`dcnv3`, :func:`dcnv3_backward`, :func:`dcnv4`,
  :func:`dcnv4_backward` (backends: ``refdcn/reference/dcnv3_loops.py``,
  ``refdcn/backends/numba_dcnv3.py``);
* :mod:`~refdcn.dcnv34.torch_composition` - an independent oracle: InternImage's
  ``dcnv3_core_pytorch`` composition of ``grid_sample`` calls, rewritten here (needs torch);
* :mod:`~refdcn.dcnv34.reduction` - the exact reduction to grouped DCNv2.
"""

from .api import (BACKENDS, DCNv3Gradients, DCNv4Gradients, available, dcnv3, dcnv3_backward,
                  dcnv4, dcnv4_backward, get_backend, tap_softmax, tap_softmax_backward)
from .geometry import ModernGeometry, packed_channels, tap_order

__all__ = ["dcnv3", "dcnv3_backward", "dcnv4", "dcnv4_backward", "DCNv3Gradients",
           "DCNv4Gradients", "BACKENDS", "available", "get_backend", "tap_softmax",
           "tap_softmax_backward", "ModernGeometry", "packed_channels", "tap_order"]
