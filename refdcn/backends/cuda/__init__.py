"""Backend ``"cuda"``: deformable convolution on an NVIDIA GPU with numba-cuda kernels.

Importing it raises :class:`ImportError` when numba-cuda is not installed and
:class:`~refdcn.backends.BackendUnavailable` when there is no usable GPU and
the CUDA simulator is off (:mod:`.probe`).  :data:`SIMULATED` says whether
the kernels run on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).

NumPy inputs give NumPy results; device inputs (CuPy, PyTorch CUDA tensors,
Numba device arrays) give Numba device arrays without a host round trip
(:mod:`.interop`).

The package, one job per file:

=================  ==========================================================
``probe.py``       can it run here (numba-cuda, GPU or simulator)
``settings.py``    launch sizes, GEMM engine, deterministic mode
``sampling.py``    :mod:`refdcn.bilinear` compiled as device functions; sample indexing
``kernels.py``     im2col, atomic input scatter, coordinate gradients, bias, copies
``gather.py``      the deterministic input gradient (cells, scan, placement, sort, gather)
``gemm.py``        the tiled Numba GEMM (one tile loader) and the cuBLAS dispatch
``launch.py``      launch configurations
``memory.py``      allocation, copies, conversions (nothing shared between calls)
``interop.py``     CuPy / PyTorch / ``__cuda_array_interface__`` in, results out
``signatures.py``  every kernel's argument types (PTX compilation checks)
=================  ==========================================================

How the work is organised
-------------------------
The one block driver, :mod:`refdcn.driver`, runs im2col + matrix products over
tiles of images (or output rows) whose column buffer fits in
:func:`refdcn.set_column_memory` bytes; this package supplies its
:class:`~refdcn.driver.KernelSet` (:data:`KERNELS`): the ``"rows"`` column
layout, the kernels (:mod:`.kernels`, :mod:`.gather`), device allocation and
copies (:mod:`.memory`) and the matrix products (:mod:`.gemm`).

Determinism: the forward pass and the offset, mask, weight and bias gradients
are deterministic; ``grad_input`` is accumulated with atomic adds
(:func:`.kernels.scatter_input_gradient`) unless deterministic mode is on
(:func:`set_deterministic`, env ``REFDCN_CUDA_DETERMINISTIC=1``: the gather of
:mod:`.gather`).

Thread safety: every call allocates its own buffers (:mod:`.memory`; only
launch configurations are cached), so calls from several host threads, or a
call made while another is between its im2col and its matrix product, never
share columns.
"""

import numpy as np

from . import gather, kernels, memory, settings
from . import launch as _launch
from .gemm import matmul
from .interop import coerce, is_device, results
from .launch import launch, launch_blocks
from .probe import SIMULATED, cuda, numba_cuda_version
from .settings import set_deterministic
from .. import Capabilities
from ... import driver

__all__ = ["NAME", "DESCRIPTION", "CAPABILITIES", "SIMULATED", "KERNELS", "forward", "backward",
           "coerce", "set_deterministic", "clear_cache", "settings", "cuda"]

NAME = "cuda"
#: The input gradient uses atomic adds unless deterministic mode is on.
CAPABILITIES = Capabilities(device="cuda", compute_dtype="input", simulated=SIMULATED,
                            blocked=True, deterministic=False, deterministic_option=True)

if SIMULATED:
    DESCRIPTION = (f"numba-cuda {numba_cuda_version()} kernels on the CUDA SIMULATOR "
                   f"(NUMBA_ENABLE_CUDASIM=1: Python threads, slow; for testing only)")
else:
    DESCRIPTION = (f"numba-cuda {numba_cuda_version()} GPU kernels (im2col + cuBLAS via CuPy "
                   f"when installed, else a Numba GEMM); returns device arrays for device inputs")


def clear_cache():
    """Forget the cached launch configurations (nothing else is kept between calls)."""
    _launch.clear()


# --------------------------------------------------------------------------- the kernel set

def _samples(geom):
    return geom.batch * geom.offset_groups * geom.taps * geom.out_pixels


def _im2col(input, offset, mask, geom, columns, prepared):
    launch(kernels.im2col, _samples(geom))(input, offset, offset if mask is None else mask,
                                           mask is not None, columns, geom.kernel_record())


def _col2im(grad_columns, offset, mask, geom, grad_input, prepared):
    geo = geom.kernel_record()
    mask_arg = offset if mask is None else mask
    if settings.DETERMINISTIC:
        gather.input_gradient(offset, mask_arg, mask is not None, grad_columns, geo, grad_input)
    else:
        launch(kernels.scatter_input_gradient, _samples(geom))(
            offset, mask_arg, mask is not None, grad_columns, geo, grad_input)


def _coordinate_gradients(grad_columns, input, offset, mask, geom, convention, grad_offset,
                          grad_mask, prepared):
    launch(kernels.coordinate_gradients, _samples(geom))(
        input, offset, offset if mask is None else mask, mask is not None, grad_columns,
        geom.kernel_record(), convention, grad_offset,
        grad_offset if grad_mask is None else grad_mask)


def _workspace(geom, itemsize):
    """Bytes the kernels hold per tile besides the columns (the deterministic gather's)."""
    return gather.workspace_bytes(geom) if settings.DETERMINISTIC else 0


def _add_bias(out, bias):
    if out.size:
        launch(kernels.add_bias, out.size)(out, bias)


def _bias_gradient(grad_output):
    grad_bias = memory.empty((grad_output.shape[1],), grad_output.dtype)
    threads = min(settings.MAX_THREADS, settings.THREADS_PER_BLOCK)
    launch_blocks(kernels.bias_gradient, max(1, min(grad_output.shape[1], settings.MAX_BLOCKS)),
                  threads)(grad_output, grad_bias)
    return grad_bias


#: The backend's kernel set for :mod:`refdcn.driver` (``"rows"`` layout; the
#: input gradient accumulates into ``grad_input``).
KERNELS = driver.KernelSet(
    _im2col, _col2im, _coordinate_gradients, layout="rows", col2im_accumulates=True,
    workspace=_workspace, empty=memory.empty, zeros=memory.zeros,
    column_buffer=memory.column_buffer, matmul=matmul,
    contiguous=memory.contiguous, assign=memory.assign, add_bias=_add_bias,
    bias_gradient=_bias_gradient)


# --------------------------------------------------------------------------- the backend protocol

def forward(input, offset, mask, weight, bias, geom, dtype):
    """Deformable convolution on the GPU.

    Parameters
    ----------
    input : ndarray or device array, shape (N, C_in, H, W)
    offset : ndarray or device array, shape (N, 2*offset_groups*kh*kw, H_out, W_out)
    mask : ndarray or device array, shape (N, offset_groups*kh*kw, H_out, W_out), or None
    weight : ndarray or device array, shape (C_out, C_in/groups, kh, kw)
    bias : ndarray or device array, shape (C_out,), or None
    geom : refdcn.geometry.Geometry
    dtype : numpy dtype (float32 or float64), the compute dtype

    Returns
    -------
    output : shape (N, C_out, H_out, W_out), ``dtype``
        A Numba device array if any input was a device array, else a NumPy array.
    """
    dtype = np.dtype(dtype)
    arrays = (input, offset, mask, weight, bias)
    on_device = any(is_device(a) for a in arrays)
    out = KERNELS.forward(*(memory.to_device(a, dtype) for a in arrays), geom, dtype)
    return results((out,), on_device)[0]


def backward(grad_output, input, offset, mask, weight, bias, geom, dtype, convention):
    """The five gradients of :func:`forward` on the GPU.

    Parameters
    ----------
    grad_output : ndarray or device array, shape (N, C_out, H_out, W_out)
    input, offset, mask, weight, bias, geom, dtype : as in :func:`forward`
    convention : int
        :data:`refdcn.bilinear.BORDER_TORCHVISION` or ``BORDER_MMCV``.

    Returns
    -------
    (grad_input, grad_offset, grad_mask, grad_weight, grad_bias)
        Shapes of the corresponding inputs, ``dtype``; ``grad_mask`` /
        ``grad_bias`` are None when ``mask`` / ``bias`` are None.  Numba device
        arrays if any input was a device array, else NumPy arrays.
        ``grad_input`` is accumulated with atomic adds (run-to-run differences
        in the last bits) unless ``settings.DETERMINISTIC`` is set.
    """
    dtype = np.dtype(dtype)
    arrays = (grad_output, input, offset, mask, weight, bias)
    on_device = any(is_device(a) for a in arrays)
    grads = KERNELS.backward(*(memory.to_device(a, dtype) for a in arrays), geom, dtype,
                             convention)
    return results(grads, on_device)
