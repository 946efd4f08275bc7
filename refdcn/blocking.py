"""im2col + matrix product, over blocks of images: the driver of the CPU backends.

Every fast deformable convolution is built the same way, and so are refdcn's
``"numpy"``, ``"numba"`` and ``"cython"`` backends.  Each supplies three
*column kernels* (the deformable sampling steps); this module owns the rest:

forward, per block of images
    ``columns = im2col(input, offset, mask)``      shape (B, C_in*kh*kw, P)
    ``out[b, group g] = W_g @ columns[b, rows of g]``  one GEMM per image and group
backward, per block of images
    ``columns = im2col(...)``                          (recomputed, not stored)
    ``grad_W_g += G[b, g] @ columns[b, g]^T``           images in batch order
    ``grad_columns[b, g] = W_g^T @ G[b, g]``
    ``grad_input  = col2im(grad_columns, offset, mask)`` the adjoint of sampling
    ``grad_offset, grad_mask = coordinate_gradients(grad_columns, input, offset, mask)``

Row ``c*kh*kw + k`` of the columns holds channel ``c``, tap ``k = i*kw + j``;
column ``oy*W_out + ox`` holds output pixel ``(oy, ox)`` (``P = H_out*W_out``).

The column buffers are processed in blocks of whole images so that they stay
under :func:`column_memory` bytes whatever the batch size (one image at a time
if a single image needs more).  Each image is always computed by the same
kernels and the same GEMM calls, and the weight gradient is accumulated image
by image in batch order, so results are bitwise identical for every block size.

A column-kernel set is any object with these three functions::

    im2col(input, offset, mask, geom, dtype) -> columns (B, C_in*kh*kw, P)
    col2im(grad_columns, offset, mask, geom, grad_input)      # writes grad_input (B, C_in, H, W)
    coordinate_gradients(grad_columns, input, offset, mask, geom, convention,
                         grad_offset, grad_mask)              # writes them; grad_mask may be None

``geom`` describes the block (``geom.batch`` = images in the block); the
arrays are C-contiguous in the compute dtype; ``mask`` may be None.
"""

import os
import re

import numpy as np

DEFAULT_COLUMN_MEMORY = 256 * 2**20
_column_memory = None


def _parse_bytes(text, name="REFDCN_COLUMN_MEMORY"):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*", str(text))
    unit = ((m and m.group(2)) or "b").lower()[0]
    value = int(float(m.group(1)) * {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]) if m else 0
    if value < 1:
        raise ValueError(f"{name} must be a positive size such as 268435456 or 256MiB; "
                         f"got {text!r}")
    return value


def column_memory():
    """Upper bound in bytes on the column buffers of one block (default 256 MiB).

    Set with :func:`set_column_memory` or the environment variable
    ``REFDCN_COLUMN_MEMORY`` (bytes, or with a unit: ``512MiB``, ``1GiB``).
    """
    if _column_memory is not None:
        return _column_memory
    env = os.environ.get("REFDCN_COLUMN_MEMORY")
    return _parse_bytes(env) if env else DEFAULT_COLUMN_MEMORY


def set_column_memory(nbytes):
    """Set the column-buffer bound: bytes (a positive int), a size string as in
    ``REFDCN_COLUMN_MEMORY`` (``"512MiB"``), or ``None`` (the default/env value).

    Raises
    ------
    TypeError
        For a bool, float or any other type.
    ValueError
        For a size below one byte or a string that is not a size.
    """
    global _column_memory
    if isinstance(nbytes, str):
        nbytes = _parse_bytes(nbytes, "nbytes")
    elif nbytes is not None and (isinstance(nbytes, bool)
                                 or not isinstance(nbytes, (int, np.integer))):
        raise TypeError(f"nbytes must be a positive int, a size such as '512MiB', or None; "
                        f"got {type(nbytes).__name__} {nbytes!r}")
    if nbytes is not None and nbytes < 1:
        raise ValueError(f"nbytes must be a positive int or None; got {nbytes!r}")
    _column_memory = None if nbytes is None else int(nbytes)


def images_per_block(geom, itemsize, buffers, limit=None):
    """How many images fit in one block of ``buffers`` column buffers."""
    per_image = geom.in_channels * geom.taps * geom.out_pixels * itemsize * buffers
    limit = column_memory() if limit is None else limit
    return max(1, min(geom.batch, limit // max(per_image, 1)))


def _blocks(batch, size):
    for start in range(0, batch, size):
        yield start, min(batch, start + size)


def _grouped_weight(weight, geom):
    return weight.reshape(geom.groups, geom.out_per_group, geom.in_per_group * geom.taps)


def forward(kernels, input, offset, mask, weight, bias, geom, dtype, block=None):
    """Forward pass: im2col per block, then one GEMM per image and group.

    ``block`` overrides the number of images per block (for tests).
    Returns the output, shape (N, C_out, H_out, W_out), in ``dtype``.
    """
    out = np.empty((geom.batch, geom.out_channels, geom.out_pixels), dtype)
    if geom.batch == 0:
        return out.reshape(0, geom.out_channels, geom.out_h, geom.out_w)
    wg = _grouped_weight(weight, geom)
    rows, outs = wg.shape[2], geom.out_per_group
    size = block or images_per_block(geom, np.dtype(dtype).itemsize, 1)
    for start, stop in _blocks(geom.batch, size):
        columns = kernels.im2col(input[start:stop], offset[start:stop],
                                 None if mask is None else mask[start:stop],
                                 geom.with_batch(stop - start), dtype)
        for b in range(stop - start):
            for g in range(geom.groups):
                np.matmul(wg[g], columns[b, g * rows:(g + 1) * rows],
                          out=out[start + b, g * outs:(g + 1) * outs])
    if bias is not None:
        out += bias[:, None]
    return out.reshape(geom.batch, geom.out_channels, geom.out_h, geom.out_w)


def backward(kernels, grad_output, input, offset, mask, weight, bias, geom, dtype, convention,
             block=None):
    """The five gradients; see the module docstring for the steps.

    Returns ``(grad_input, grad_offset, grad_mask, grad_weight, grad_bias)``.
    """
    grad_input = np.zeros(input.shape, dtype)
    grad_offset = np.zeros(offset.shape, dtype)
    grad_mask = None if mask is None else np.zeros(mask.shape, dtype)
    wg = _grouped_weight(weight, geom)
    grad_wg = np.zeros(wg.shape, dtype)
    rows, outs = wg.shape[2], geom.out_per_group
    go = grad_output.reshape(geom.batch, geom.out_channels, geom.out_pixels)
    size = block or images_per_block(geom, np.dtype(dtype).itemsize, 2)
    for start, stop in _blocks(geom.batch, size):
        blk = geom.with_batch(stop - start)
        m = None if mask is None else mask[start:stop]
        columns = kernels.im2col(input[start:stop], offset[start:stop], m, blk, dtype)
        grad_columns = np.empty_like(columns)
        for b in range(stop - start):
            for g in range(geom.groups):
                go_bg = go[start + b, g * outs:(g + 1) * outs]
                grad_wg[g] += go_bg @ columns[b, g * rows:(g + 1) * rows].T
                np.matmul(wg[g].T, go_bg, out=grad_columns[b, g * rows:(g + 1) * rows])
        del columns
        kernels.col2im(grad_columns, offset[start:stop], m, blk, grad_input[start:stop])
        kernels.coordinate_gradients(grad_columns, input[start:stop], offset[start:stop], m, blk,
                                     convention, grad_offset[start:stop],
                                     None if grad_mask is None else grad_mask[start:stop])
    grad_bias = None if bias is None else go.sum(axis=(0, 2)).astype(dtype)
    return grad_input, grad_offset, grad_mask, grad_wg.reshape(weight.shape), grad_bias


class ColumnKernels:
    """A column-kernel set (see the module docstring) and the backend built on it.

    A backend module writes its three kernels and then::

        _KERNELS = blocking.ColumnKernels(im2col, col2im, coordinate_gradients)
        forward, backward = _KERNELS.forward, _KERNELS.backward
    """

    def __init__(self, im2col, col2im, coordinate_gradients):
        self.im2col = im2col
        self.col2im = col2im
        self.coordinate_gradients = coordinate_gradients

    def forward(self, input, offset, mask, weight, bias, geom, dtype):
        """Forward pass of the backend (see :func:`refdcn.blocking.forward`)."""
        return forward(self, input, offset, mask, weight, bias, geom, dtype)

    def backward(self, grad_output, input, offset, mask, weight, bias, geom, dtype, convention):
        """The five gradients of the backend (see :func:`refdcn.blocking.backward`)."""
        return backward(self, grad_output, input, offset, mask, weight, bias, geom, dtype,
                        convention)
