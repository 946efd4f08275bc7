"""Offset and mask channel layouts of other implementations, and converters.

refdcn, torchvision, mmcv, MSRA's DCNv2_op, CharlesShang/DCNv2 and ONNX
``DeformConv`` all use the **torchvision layout**.  For offset group ``d``,
kernel tap ``(i, j)`` of a ``kh x kw`` kernel (``K = kh*kw`` taps, row-major tap
index ``k = i*kw + j``) and component ``a`` (0 = dy, the row offset; 1 = dx,
the column offset)::

    torchvision offset channel  = d*2K + 2*k + a           (interleaved (dy, dx) pairs)
    torchvision mask channel    = d*K + k

Two other layouts are in common use, and feeding either to a torchvision-layout
kernel silently gives wrong results (no shape changes):

**planar** (the seed project 4uiiurz1/pytorch-deform-conv-v2, and code derived
from it): per offset group, first the K row offsets, then the K column offsets::

    planar offset channel       = d*2K + a*K + k
    planar mask channel         = d*K + k                  (same as torchvision)

so ``torchvision[2k] = planar[k]`` and ``torchvision[2k+1] = planar[K+k]``
(for ``D = 1``).  The seed has no offset groups; with ``D > 1`` this module
uses one planar block per offset group.

**DCNv3/DCNv4** (InternImage ``ops_dcnv3``, OpenGVLab/DCNv4): (dx, dy) pairs,
x first, and taps in x-major order (the outer loop runs over the kernel
*width*), tap index ``t = j*kh + i``::

    DCNv4 offset channel        = d*2K + 2*t + b,   b = 0: dx, b = 1: dy
    DCNv4 mask channel          = d*K + t

DCNv3/v4 are channels-last, so their channel axis is usually the last one:
every converter takes ``axis`` (default 1, the torchvision (N, C, H, W)
position; pass ``axis=-1`` for (N, H, W, C)).  DCNv4 additionally packs the
offsets and the modulation into one tensor; see :func:`unpack_dcnv4`.

Every converter is a pure permutation of channels (:func:`unpack_dcnv4` also
slices), works on NumPy arrays and on torch tensors, and has an exact inverse.

>>> import numpy as np
>>> planar = np.array([10., 11., 12., 13., 20., 21., 22., 23.]).reshape(1, 8, 1, 1)  # 2x2 kernel
>>> planar_to_torchvision(planar).ravel()    # dy0 dx0 dy1 dx1 ...
array([10., 20., 11., 21., 12., 22., 13., 23.])
"""

import numpy as np

from .geometry import mask_channel, offset_channel

__all__ = ["torchvision_offset_channel", "planar_offset_channel", "dcnv4_offset_channel",
           "dcnv4_mask_channel", "planar_to_torchvision", "torchvision_to_planar",
           "swap_offset_pairs", "dcnv4_to_torchvision", "torchvision_to_dcnv4",
           "dcnv4_mask_to_torchvision", "torchvision_mask_to_dcnv4", "unpack_dcnv4",
           "pack_dcnv4"]


# ---------------------------------------------------------------- index maps
def torchvision_offset_channel(d, i, j, a, kernel_size):
    """Channel of component ``a`` (0 = dy, 1 = dx) of tap (i, j), offset group d.

    :func:`refdcn.geometry.offset_channel` (the torchvision layout's one
    definition) with the argument order of the converters here.
    """
    kh, kw = _kernel(kernel_size)
    return offset_channel(d, i, j, kh, kw, a)


def planar_offset_channel(d, i, j, a, kernel_size):
    """Channel of component ``a`` (0 = dy, 1 = dx) of tap (i, j) in the planar layout."""
    kh, kw = _kernel(kernel_size)
    K = kh * kw
    return d * 2 * K + a * K + i * kw + j


def dcnv4_offset_channel(d, i, j, a, kernel_size):
    """Channel of component ``a`` (0 = dy, 1 = dx) of tap (i, j) in the DCNv3/v4 layout.

    DCNv4 stores dx first, so ``a = 1`` (dx) is at ``2*t`` and ``a = 0`` (dy)
    at ``2*t + 1``, with the x-major tap index ``t = j*kh + i``.
    """
    kh, kw = _kernel(kernel_size)
    return d * 2 * kh * kw + 2 * (j * kh + i) + (1 - a)


def dcnv4_mask_channel(d, i, j, kernel_size):
    """Mask (modulation) channel of tap (i, j), offset group d, in the DCNv3/v4 layout."""
    kh, kw = _kernel(kernel_size)
    return d * kh * kw + j * kh + i


# ---------------------------------------------------------------- helpers
def _kernel(kernel_size):
    if isinstance(kernel_size, (int, np.integer)):
        return int(kernel_size), int(kernel_size)
    try:
        kh, kw = (int(v) for v in kernel_size)
    except (TypeError, ValueError):
        raise TypeError(f"kernel_size must be an int or a pair (kh, kw); "
                        f"got {kernel_size!r}") from None
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be positive; got {kernel_size!r}")
    return kh, kw


def _channels(array, axis, per_group, groups, name, what):
    shape = tuple(array.shape)
    try:
        size = shape[axis]
    except IndexError:
        raise ValueError(f"{name} has shape {shape}: no axis {axis}") from None
    if groups < 1 or size != per_group * groups:
        raise ValueError(f"{name}.shape[{axis}] must be {what} = {per_group * groups} "
                         f"(groups={groups}); got shape {shape}")
    return size


def _gather(array, index, axis):
    """``array`` with the entries along ``axis`` taken in the order ``index``."""
    if hasattr(array, "index_select") and not isinstance(array, np.ndarray):   # torch
        import torch
        dim = axis % array.dim()
        return array.index_select(dim, torch.as_tensor(index, device=array.device))
    return np.take(np.asarray(array), index, axis=axis)


def _map(kernel_size, groups, channel_of):
    """``index[target channel] = source channel`` for every (d, i, j, a)."""
    kh, kw = _kernel(kernel_size)
    index = np.empty(2 * groups * kh * kw, dtype=np.intp)
    for d in range(groups):
        for i in range(kh):
            for j in range(kw):
                for a in (0, 1):
                    index[torchvision_offset_channel(d, i, j, a, (kh, kw))] = \
                        channel_of(d, i, j, a, (kh, kw))
    return index


def _planar_kernel(array, axis, offset_groups, name):
    size = array.shape[axis]
    if offset_groups < 1 or size % (2 * offset_groups):
        raise ValueError(f"{name}.shape[{axis}] must be a multiple of 2*offset_groups = "
                         f"{2 * offset_groups}; got shape {tuple(array.shape)}")
    return (1, size // (2 * offset_groups))      # only K matters for planar <-> interleaved


# ---------------------------------------------------------------- planar
def planar_to_torchvision(offset, offset_groups=1, axis=1):
    """Planar offsets (seed project) -> torchvision interleaved (dy, dx) pairs.

    ``out[d*2K + 2k + a] = offset[d*2K + a*K + k]`` along ``axis``, with
    ``K = offset.shape[axis] // (2*offset_groups)``.

    Parameters
    ----------
    offset : array, channel axis of size 2*offset_groups*K
    offset_groups : int
    axis : int
        The channel axis (1 for (N, C, H, W)).

    Returns
    -------
    array of the same shape, torchvision layout.
    """
    kernel = _planar_kernel(offset, axis, offset_groups, "offset")
    return _gather(offset, _map(kernel, offset_groups, planar_offset_channel), axis)


def torchvision_to_planar(offset, offset_groups=1, axis=1):
    """torchvision interleaved offsets -> planar (the inverse of :func:`planar_to_torchvision`).

    ``out[d*2K + a*K + k] = offset[d*2K + 2k + a]``.
    """
    kernel = _planar_kernel(offset, axis, offset_groups, "offset")
    return _gather(offset, np.argsort(_map(kernel, offset_groups, planar_offset_channel)), axis)


# ---------------------------------------------------------------- (dx, dy) pairs
def swap_offset_pairs(offset, axis=1):
    """Swap every (first, second) pair of channels: (dy, dx) <-> (dx, dy).

    ``out[2k] = offset[2k + 1]``, ``out[2k + 1] = offset[2k]``; its own inverse.
    The tap order is unchanged (for the full DCNv3/v4 layout use
    :func:`dcnv4_to_torchvision`).
    """
    size = offset.shape[axis]
    if size % 2:
        raise ValueError(f"offset.shape[{axis}] must be even (pairs); got shape "
                         f"{tuple(offset.shape)}")
    index = np.arange(size).reshape(-1, 2)[:, ::-1].ravel()
    return _gather(offset, index, axis)


# ---------------------------------------------------------------- DCNv3 / DCNv4
def dcnv4_to_torchvision(offset, kernel_size, offset_groups=1, axis=1):
    """DCNv3/v4 offsets ((dx, dy) pairs, x-major taps) -> torchvision layout.

    ``out[d*2K + 2*(i*kw + j) + a] = offset[d*2K + 2*(j*kh + i) + (1 - a)]``
    (a = 0: dy, 1: dx).

    Parameters
    ----------
    offset : array, channel axis of size 2*offset_groups*kh*kw
    kernel_size : int or (kh, kw)
    offset_groups : int
        DCNv4's ``group``.
    axis : int
        Channel axis; DCNv3/v4 tensors are channels-last (``axis=-1``).
    """
    kh, kw = _kernel(kernel_size)
    _channels(offset, axis, 2 * kh * kw, offset_groups, "offset", "2*offset_groups*kh*kw")
    return _gather(offset, _map((kh, kw), offset_groups, dcnv4_offset_channel), axis)


def torchvision_to_dcnv4(offset, kernel_size, offset_groups=1, axis=1):
    """torchvision offsets -> DCNv3/v4 layout (inverse of :func:`dcnv4_to_torchvision`).

    ``out[d*2K + 2*(j*kh + i) + b] = offset[d*2K + 2*(i*kw + j) + (1 - b)]``
    (b = 0: dx, 1: dy).
    """
    kh, kw = _kernel(kernel_size)
    _channels(offset, axis, 2 * kh * kw, offset_groups, "offset", "2*offset_groups*kh*kw")
    return _gather(offset, np.argsort(_map((kh, kw), offset_groups, dcnv4_offset_channel)),
                   axis)


def _mask_map(kernel_size, groups):
    kh, kw = _kernel(kernel_size)
    index = np.empty(groups * kh * kw, dtype=np.intp)
    for d in range(groups):
        for i in range(kh):
            for j in range(kw):
                index[mask_channel(d, i, j, kh, kw)] = dcnv4_mask_channel(d, i, j, (kh, kw))
    return index


def dcnv4_mask_to_torchvision(mask, kernel_size, offset_groups=1, axis=1):
    """DCNv3/v4 modulation (x-major taps) -> torchvision mask (row-major taps).

    ``out[d*K + i*kw + j] = mask[d*K + j*kh + i]``.
    """
    kh, kw = _kernel(kernel_size)
    _channels(mask, axis, kh * kw, offset_groups, "mask", "offset_groups*kh*kw")
    return _gather(mask, _mask_map((kh, kw), offset_groups), axis)


def torchvision_mask_to_dcnv4(mask, kernel_size, offset_groups=1, axis=1):
    """torchvision mask -> DCNv3/v4 modulation: ``out[d*K + j*kh + i] = mask[d*K + i*kw + j]``."""
    kh, kw = _kernel(kernel_size)
    _channels(mask, axis, kh * kw, offset_groups, "mask", "offset_groups*kh*kw")
    return _gather(mask, np.argsort(_mask_map((kh, kw), offset_groups)), axis)


def unpack_dcnv4(offset_mask, kernel_size, groups):
    """Split DCNv4's packed ``offset_mask`` into torchvision-layout offset and mask.

    DCNv4 packs, per pixel and channels-last, for each group ``g`` at
    ``g*3K``: the 2K offsets (DCNv4 order) then the K modulation weights; the
    channel count is padded up to a multiple of 8.

    Parameters
    ----------
    offset_mask : array, shape (N, H_out, W_out, C_pad) with C_pad >= 3*groups*K
    kernel_size : int or (kh, kw)
    groups : int

    Returns
    -------
    offset : ndarray, shape (N, 2*groups*K, H_out, W_out), torchvision layout
    mask : ndarray, shape (N, groups*K, H_out, W_out), torchvision layout
        (DCNv4 applies no softmax: this is the raw modulation.)
    """
    kh, kw = _kernel(kernel_size)
    K = kh * kw
    a = np.asarray(offset_mask)
    if a.ndim != 4 or a.shape[-1] < 3 * groups * K:
        raise ValueError(f"offset_mask must have shape (N, H_out, W_out, C_pad) with C_pad >= "
                         f"3*groups*kh*kw = {3 * groups * K}; got {a.shape}")
    per = a[..., :3 * groups * K].reshape(a.shape[:3] + (groups, 3 * K))
    off = per[..., :2 * K].reshape(a.shape[:3] + (2 * groups * K,))
    msk = per[..., 2 * K:].reshape(a.shape[:3] + (groups * K,))
    off = dcnv4_to_torchvision(off, (kh, kw), groups, axis=-1)
    msk = dcnv4_mask_to_torchvision(msk, (kh, kw), groups, axis=-1)
    return (np.ascontiguousarray(off.transpose(0, 3, 1, 2)),
            np.ascontiguousarray(msk.transpose(0, 3, 1, 2)))


def pack_dcnv4(offset, mask, kernel_size):
    """The inverse of :func:`unpack_dcnv4`: torchvision offset + mask -> DCNv4 packed.

    Returns an array of shape (N, H_out, W_out, ceil(3*groups*K / 8) * 8), the
    padding channels zero.
    """
    kh, kw = _kernel(kernel_size)
    K = kh * kw
    offset, mask = np.asarray(offset), np.asarray(mask)
    groups = mask.shape[1] // K
    _channels(offset, 1, 2 * K, groups, "offset", "2*groups*kh*kw")
    _channels(mask, 1, K, groups, "mask", "groups*kh*kw")
    off = torchvision_to_dcnv4(offset, (kh, kw), groups, axis=1).transpose(0, 2, 3, 1)
    msk = torchvision_mask_to_dcnv4(mask, (kh, kw), groups, axis=1).transpose(0, 2, 3, 1)
    n, h, w = off.shape[:3]
    per = np.concatenate([off.reshape(n, h, w, groups, 2 * K),
                          msk.reshape(n, h, w, groups, K)], axis=-1).reshape(n, h, w, -1)
    padded = -(-3 * groups * K // 8) * 8
    out = np.zeros((n, h, w, padded), dtype=np.result_type(off.dtype, msk.dtype))
    out[..., :3 * groups * K] = per
    return out
