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
``kernels.py``     im2col, coordinate gradients + atomic input scatter, stores
``gather.py``      the deterministic input gradient (cells, scan, placement, sort, gather)
``gemm.py``        the tiled Numba GEMM (one tile loader) and the cuBLAS dispatch
``launch.py``      launch configurations
``memory.py``      allocation, input copies, per-call workspaces
``interop.py``     CuPy / PyTorch / ``__cuda_array_interface__`` in, results out
``signatures.py``  every kernel's argument types (PTX compilation checks)
=================  ==========================================================

How the work is organised
-------------------------
im2col + matrix product over blocks of whole images whose column buffer fits
in :func:`refdcn.set_column_memory` bytes:

forward
    :func:`.kernels.im2col` (one thread per (image, offset group, tap, output
    pixel): consecutive threads handle consecutive output pixels, so offset
    reads and column writes coalesce), one GEMM per convolution group
    ``tmp_g = W_g @ columns_g``, then :func:`.kernels.store_output` adds the
    bias and transposes to ``(B, C_out, H_out, W_out)``.
backward
    ``columns`` again (recomputed), ``grad_W_g += G_g @ columns_g^T`` and
    ``grad_columns_g = W_g^T @ G_g`` (the second overwrites the column
    buffer), then :func:`.kernels.coordinate_gradients` (offset and mask
    gradients; the input gradient by atomic adds, or by the deterministic
    gather of :mod:`.gather`); :func:`.kernels.bias_gradient` sums
    ``grad_output`` per channel in a fixed order.

Determinism: the forward pass and the offset, mask, weight and bias gradients
are deterministic; ``grad_input`` is deterministic only in deterministic mode
(:func:`set_deterministic`, env ``REFDCN_CUDA_DETERMINISTIC=1``).

Thread safety: every call takes its own scratch buffers (:func:`.memory.workspace`),
so calls from several host threads do not share columns.
"""

import numpy as np

from . import settings
from .probe import SIMULATED, DeviceArray, cuda, numba_cuda_version
from . import gather, kernels, memory, launch as _launch
from ._record import kernel_record
from .gemm import matmul
from .interop import coerce, is_device, results
from .launch import launch, launch_blocks
from .settings import set_deterministic
from ...blocking import images_per_block

__all__ = ["NAME", "DEVICE", "DESCRIPTION", "SIMULATED", "forward", "backward", "coerce",
           "set_deterministic", "clear_cache", "settings", "cuda"]

NAME = "cuda"
DEVICE = "cuda"

if SIMULATED:
    DESCRIPTION = (f"numba-cuda {numba_cuda_version()} kernels on the CUDA SIMULATOR "
                   f"(NUMBA_ENABLE_CUDASIM=1: Python threads, slow; for testing only)")
else:
    DESCRIPTION = (f"numba-cuda {numba_cuda_version()} GPU kernels (im2col + cuBLAS via CuPy "
                   f"when installed, else a Numba GEMM); returns device arrays for device inputs")


def clear_cache():
    """Free the idle workspaces and forget the cached launch configurations."""
    memory.clear()
    _launch.clear()


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
    on_device = any(is_device(a) for a in (input, offset, mask, weight, bias))
    input, offset, mask, weight, bias = (memory.to_device(a, dtype)
                                         for a in (input, offset, mask, weight, bias))
    out = memory.empty((geom.batch, geom.out_channels, geom.out_h, geom.out_w), dtype)
    if out.size == 0:
        return results((out,), on_device)[0]
    G, O, P = geom.groups, geom.out_channels, geom.out_pixels
    R = geom.in_channels * geom.taps
    geo = kernel_record(geom)
    wg = weight.reshape(G, O // G, R // G)
    nb_max = images_per_block(geom, dtype.itemsize, 1)
    with memory.workspace() as ws:
        mask_arg = offset if mask is None else mask
        bias_arg = ws.dummy(1, dtype) if bias is None else bias
        for b0 in range(0, geom.batch, nb_max):
            nb = min(nb_max, geom.batch - b0)
            columns = ws.scratch("columns", (R, nb * P), dtype)
            tmp = ws.scratch("tmp", (O, nb * P), dtype)
            launch(kernels.im2col, nb * geom.offset_groups * geom.taps * P)(
                input, offset, mask_arg, mask is not None, columns, b0, nb, geo)
            matmul(wg, ws.scratch("columns", (G, R // G, nb * P), dtype),
                   ws.scratch("tmp", (G, O // G, nb * P), dtype), False, False, False)
            launch(kernels.store_output, nb * O * P)(tmp, bias_arg, bias is not None, out, b0,
                                                     nb, geom.out_w)
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
    on_device = any(is_device(a) for a in (grad_output, input, offset, mask, weight, bias))
    grad_output, input, offset, mask, weight, bias = (
        memory.to_device(a, dtype) for a in (grad_output, input, offset, mask, weight, bias))
    deterministic = settings.DETERMINISTIC
    G, O, P, K, D = (geom.groups, geom.out_channels, geom.out_pixels, geom.taps,
                     geom.offset_groups)
    R = geom.in_channels * K
    grad_input = memory.zeros(input.shape, dtype)
    grad_offset = memory.empty(offset.shape, dtype)
    grad_mask = None if mask is None else memory.empty(mask.shape, dtype)
    grad_weight = memory.empty(weight.shape, dtype)
    grad_bias = None if bias is None else memory.empty(bias.shape, dtype)
    if grad_bias is not None:
        threads = min(settings.MAX_THREADS, settings.THREADS_PER_BLOCK)
        launch_blocks(kernels.bias_gradient, max(1, min(O, settings.MAX_BLOCKS)), threads)(
            grad_output, grad_bias)
    if geom.batch == 0:
        grad_weight = memory.zeros(weight.shape, dtype)
        return results((grad_input, grad_offset, grad_mask, grad_weight, grad_bias), on_device)
    geo = kernel_record(geom)
    mask_arg = offset if mask is None else mask
    grad_mask_arg = grad_offset if grad_mask is None else grad_mask
    wg = weight.reshape(G, O // G, R // G)
    grad_wg = grad_weight.reshape(G, O // G, R // G)
    nb_max = images_per_block(geom, dtype.itemsize, 1)
    with memory.workspace() as ws:
        for b0 in range(0, geom.batch, nb_max):
            nb = min(nb_max, geom.batch - b0)
            samples = nb * D * K * P
            columns = ws.scratch("columns", (R, nb * P), dtype)
            launch(kernels.im2col, samples)(input, offset, mask_arg, mask is not None, columns,
                                            b0, nb, geo)
            if nb == 1:       # grad_output[b0] is already (C_out, P)
                gt3 = grad_output[b0].reshape(G, O // G, P)
            else:             # (nb, C_out, P) -> (C_out, nb*P)
                launch(kernels.gather_grad_output, nb * O * P)(
                    grad_output, ws.scratch("tmp", (O, nb * P), dtype), b0, nb, geom.out_w)
                gt3 = ws.scratch("tmp", (G, O // G, nb * P), dtype)
            cols3 = ws.scratch("columns", (G, R // G, nb * P), dtype)
            matmul(gt3, cols3, grad_wg, False, True, b0 > 0)       # grad_W += G @ columns^T
            matmul(wg, gt3, cols3, True, False, False)             # grad_columns = W^T @ G
            launch(kernels.coordinate_gradients, samples)(
                input, offset, mask_arg, mask is not None, columns, b0, nb, geo, convention,
                not deterministic, grad_input, grad_offset, grad_mask_arg)
            if deterministic:
                gather.input_gradient(offset, mask_arg, mask is not None, columns, b0, nb, geo,
                                      grad_input, ws)
    return results((grad_input, grad_offset, grad_mask, grad_weight, grad_bias), on_device)
