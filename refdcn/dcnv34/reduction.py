"""DCNv3/DCNv4 as a grouped DCNv2: the exact reduction, both ways.

DCNv3 (and DCNv4, the same function) is DCNv2 (:func:`refdcn.deform_conv2d`)
with

* ``offset_groups = group``: the D channels of a group share offsets and
  weights, exactly like the channels of an offset group;
* a **diagonal weight**: ``weight[o, c, i, j] = 1`` if ``o == c`` else 0 (C_out =
  C_in = C, ``groups = 1``), so that output channel c is the modulated sum of
  the samples of input channel c alone (no channel mixing);
* the offsets permuted from (dx, dy) pairs with x-major taps to (dy, dx) pairs
  with row-major taps, and transformed for ``offset_scale = s``: DCNv2 samples
  at ``o*stride - pad + tap*dil + D2`` and DCNv3 at
  ``o*stride - pad + c + (tap*dil - c + D3) * s``, so
  ``D2 = s*D3 + (s - 1)*(tap*dil - c)`` (``c`` the kernel centre);
* for ``remove_center``: the centre tap's weight (and mask) 0;
* the mask, DCNv3's modulation weights (after the module's softmax), permuted
  like the offsets; no bias.

Going back, the gradients map by the same permutations, with the chain-rule
factor ``dD2/dD3 = s`` on the offsets.  The reduction holds for every
argument; ``tests/test_dcnv34_oracles.py`` checks that refdcn agrees with
itself through it to 1e-12 (forward and all gradients).
"""

import inspect

import numpy as np

from ..geometry import mask_channel, offset_channel
from .api import _dcnv3_views, dcnv3
from .geometry import check_dcnv3

__all__ = ["to_dcnv2", "gradients_from_dcnv2"]


def to_dcnv2(input, offset, mask, **attrs):
    """The arguments of :func:`refdcn.deform_conv2d` that compute ``dcnv3(input, offset, mask, **attrs)``.

    Parameters
    ----------
    input, offset, mask : ndarray
        DCNv3's arrays (float64 recommended).
    **attrs
        DCNv3's attributes (``kernel_h``, ``kernel_w``, ``stride_h`` ... as
        keywords).

    Returns
    -------
    args : dict
        ``input`` (N, C, H, W), ``offset``, ``weight`` (C, C, kh, kw), ``mask``,
        ``stride``, ``padding``, ``dilation``: pass as
        ``refdcn.deform_conv2d(**args)``; its output transposed to channels-last
        (``.transpose(0, 2, 3, 1)``) is DCNv3's.
    geom : refdcn.dcnv34.ModernGeometry
    """
    geom = check_dcnv3(input, offset, mask, **_full(attrs))
    off, msk = _dcnv3_views(geom, np.asarray(offset, np.float64), np.asarray(mask, np.float64))
    kh, kw, G, s = geom.kernel_h, geom.kernel_w, geom.group, geom.offset_scale
    n, ho, wo = geom.batch, geom.out_h, geom.out_w
    off2 = np.zeros((n, 2 * G * kh * kw, ho, wo))
    mask2 = np.zeros((n, G * kh * kw, ho, wo))
    for g in range(G):
        for t, (i, j) in enumerate(geom.tap_list()):
            base_y = i * geom.dilation_h - geom.centre_h
            base_x = j * geom.dilation_w - geom.centre_w
            off2[:, offset_channel(g, i, j, kh, kw, 0)] = s * off[:, :, :, g, t, 1] + (s - 1) * base_y
            off2[:, offset_channel(g, i, j, kh, kw, 1)] = s * off[:, :, :, g, t, 0] + (s - 1) * base_x
            mask2[:, mask_channel(g, i, j, kh, kw)] = msk[:, :, :, g, t]
    C = geom.channels
    weight = np.zeros((C, C, kh, kw))
    for i, j in geom.tap_list():
        weight[np.arange(C), np.arange(C), i, j] = 1.0
    args = dict(input=np.ascontiguousarray(np.asarray(input, np.float64).transpose(0, 3, 1, 2)),
                offset=off2, weight=weight, mask=mask2, stride=(geom.stride_h, geom.stride_w),
                padding=(geom.pad_h, geom.pad_w), dilation=(geom.dilation_h, geom.dilation_w))
    return args, geom


def gradients_from_dcnv2(grads, geom):
    """DCNv3's ``(grad_input, grad_offset, grad_mask)`` from DCNv2's gradients of :func:`to_dcnv2`'s call.

    ``grads`` has attributes ``input``, ``offset``, ``mask``
    (:class:`refdcn.Gradients`).
    """
    kh, kw, G, s = geom.kernel_h, geom.kernel_w, geom.group, geom.offset_scale
    n, ho, wo, K = geom.batch, geom.out_h, geom.out_w, geom.taps
    g_off = np.zeros((n, ho, wo, G, K, 2))
    g_mask = np.zeros((n, ho, wo, G, K))
    for g in range(G):
        for t, (i, j) in enumerate(geom.tap_list()):
            g_off[..., g, t, 1] = s * grads.offset[:, offset_channel(g, i, j, kh, kw, 0)]
            g_off[..., g, t, 0] = s * grads.offset[:, offset_channel(g, i, j, kh, kw, 1)]
            g_mask[..., g, t] = grads.mask[:, mask_channel(g, i, j, kh, kw)]
    return (grads.input.transpose(0, 2, 3, 1), g_off.reshape(n, ho, wo, G * K * 2),
            g_mask.reshape(n, ho, wo, G * K))



def _full(attrs):
    """DCNv3's attributes with :func:`refdcn.dcnv3`'s defaults filled in (one source of them)."""
    sig = inspect.signature(dcnv3)
    full = {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and k != "backend"}
    full.update(attrs)
    return full
