"""Deliberately wrong DCNv3/DCNv4 implementations, one known mistake each (for the verifier's tests).

Each takes the originals' positional arguments on NumPy arrays:
``f(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
dilation_w, group, group_channels, offset_scale, remove_center)`` (DCNv4: ``offset_mask``
instead of ``offset, mask``).
"""

import numpy as np

import refdcn
from refdcn.dcnv34 import api, geometry


def correct(*args):
    return refdcn.dcnv3(*args)


def yx_pairs(input, offset, mask, *attrs):
    """Reads (dy, dx) pairs."""
    off = offset.reshape(offset.shape[:3] + (-1, 2))[..., ::-1].reshape(offset.shape)
    return refdcn.dcnv3(input, np.ascontiguousarray(off), mask, *attrs)


def row_major_taps(input, offset, mask, kh, kw, *attrs):
    """Numbers its taps row-major: its channel t belongs to tap sorted(taps)[t]."""
    g, rc = attrs[6], attrs[-1]
    taps = geometry.tap_order(kh, kw, rc)
    perm = [sorted(taps).index(p) for p in taps]       # x-major position -> its channel
    n, h, w, _ = mask.shape
    off = offset.reshape(n, h, w, g, -1, 2)[:, :, :, :, perm].reshape(offset.shape)
    msk = mask.reshape(n, h, w, g, -1)[:, :, :, :, perm].reshape(mask.shape)
    return refdcn.dcnv3(input, off, msk, kh, kw, *attrs)


def softmax_applied(input, offset, mask, *attrs):
    """Applies a softmax over each group's K weights."""
    g = attrs[8]
    n, h, w, _ = mask.shape
    soft = api.tap_softmax(mask.reshape(n, h, w, g, -1)).reshape(mask.shape)
    return refdcn.dcnv3(input, offset, soft, *attrs)


def scale_offsets_only(input, offset, mask, kh, kw, sh, sw, ph, pw, dh, dw, g, d, scale, rc):
    """Samples at o*stride - pad + tap*dilation + offset*offset_scale (taps not scaled)."""
    return refdcn.dcnv3(input, offset * scale, mask, kh, kw, sh, sw, ph, pw, dh, dw, g, d, 1.0,
                        rc)


def packed_no_padding(input, offset_mask, kh, kw, *attrs):
    """DCNv4: reads the packed tensor with a per-pixel stride of 3*G*K."""
    g, rc = attrs[6], attrs[-1]
    k3 = 3 * g * (kh * kw - int(rc))
    n, h, w, _ = offset_mask.shape
    flat = np.ascontiguousarray(offset_mask).reshape(-1)[:n * h * w * k3].reshape(n, h, w, k3)
    return refdcn.dcnv4(input, flat, kh, kw, *attrs)


def torchvision_gradient(grad_output, *args):
    """Correct forward, but torchvision's offset gradient at exactly -1."""
    return refdcn.dcnv3_backward(grad_output, *args, convention="torchvision")


def correct_dcnv4(*args):
    return refdcn.dcnv4(*args)
