"""Every kernel of the package and its argument types, for ahead-of-time PTX compilation.

``numba.cuda.compile_ptx`` compiles a kernel without a GPU; tests/test_cuda.py
compiles every one of :func:`kernel_signatures` for float32 and float64, so
typing errors of device code are caught on machines without a GPU (the
simulator runs kernels as Python and would not see them).
"""

import numpy as np

from . import gather, kernels
from .gemm import GEMM_KERNELS
from ...geometry import KernelGeometry

#: name -> kernel dispatcher (the element-wise, reduction, sorting and gather kernels).
KERNELS = {name: getattr(module, name) for module, names in (
    (kernels, ("im2col", "scatter_input_gradient", "coordinate_gradients", "add_bias",
               "bias_gradient", "fill", "convert4", "convert2", "convert1")),
    (gather, ("sample_cells", "exclusive_scan", "place_samples", "sort_buckets",
              "gather_input_gradient"))) for name in names}


def geometry_type():
    """The Numba type of a :class:`refdcn.geometry.KernelGeometry` argument."""
    from numba import types as nt
    return nt.NamedUniTuple(nt.int64, len(KernelGeometry._fields), KernelGeometry)


def kernel_signatures(dtype):
    """``{name: (python_function, argument_types)}`` of every kernel for ``dtype``.

    The types a call of the backend passes (C-contiguous arrays of the compute
    dtype, int64 indices, a :class:`~refdcn.geometry.KernelGeometry`), plus
    the GEMM kernel as ``"gemm_kernel"``.
    """
    from numba import types as nt
    f = nt.float64 if np.dtype(dtype) == np.float64 else nt.float32
    a1, a2, a3, a4 = (nt.Array(f, nd, "C") for nd in (1, 2, 3, 4))
    i1 = nt.Array(nt.int64, 1, "C")
    i64, flag = nt.int64, nt.boolean
    geo = geometry_type()
    half = lambda nd: nt.Array(nt.float16, nd, "A")
    types = {
        "im2col": (a4, a4, a4, flag, a3, geo),
        "scatter_input_gradient": (a4, a4, flag, a3, geo, a4),
        "coordinate_gradients": (a4, a4, a4, flag, a3, geo, i64, a4, a4),
        "add_bias": (a3, a1),
        "bias_gradient": (a3, a1),
        "fill": (a1, f),
        "convert4": (half(4), a4),
        "convert2": (nt.Array(f, 2, "A"), a2),
        "convert1": (half(1), a1),
        "sample_cells": (a4, geo, i1, i1),
        "exclusive_scan": (i1, i1),
        "place_samples": (i1, i1, i1, i1),
        "sort_buckets": (i1, i1),
        "gather_input_gradient": (a4, a4, flag, a3, geo, i1, i1, a4),
    }
    table = {name: (KERNELS[name].py_func, sig) for name, sig in types.items()}
    table["gemm_kernel"] = (GEMM_KERNELS[np.dtype(dtype)].py_func,
                            (a3, a3, a3, flag, flag, flag))
    return table
