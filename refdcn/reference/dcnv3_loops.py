"""DCNv3 / DCNv4 by explicit loops: the textbook reference (backend ``"reference"``).

Every line maps to one term of the formula; float64 throughout, whatever the
input dtype.  Both operators compute the same function and differ only in how
offsets and weights are stored (:mod:`refdcn.dcnv34.geometry`); the public API
(:mod:`refdcn.dcnv34.api`) hands this module views of either layout:

``offset`` (N, H_out, W_out, G, K, 2): ``[..., 0]`` = dx, ``[..., 1]`` = dy
``mask``   (N, H_out, W_out, G, K)

The formula
-----------
For image ``n``, output pixel ``(oy, ox)``, group ``g``, channel ``d`` of the
group (``c = g*D + d``) and tap ``t`` at kernel row ``i`` and column ``j``
(x-major order)::

    y = scaled_sampling_point(oy, sh, ph, i, dh, dy[n, oy, ox, g, t], ch, offset_scale)
    x = scaled_sampling_point(ox, sw, pw, j, dw, dx[n, oy, ox, g, t], cw, offset_scale)
    out[n, oy, ox, c] = sum_t m[n, oy, ox, g, t] * S(input[n, :, :, c], y, x)

(InternImage ``dcnv3_im2col_cuda.cuh``, OpenGVLab/DCNv4 ``dcnv4_im2col_cuda.cuh``
``forward_kernel_dcn``) with ``S`` the zero-border bilinear sample of
:mod:`refdcn.bilinear` (torchvision's border).  No weight, no bias: channel
mixing happens in the Linear layers around the op.

The backward, for an upstream gradient ``G = dL/d out`` (``go = G[n, oy, ox, c]``)::

    grad_mask[n, oy, ox, g, t]      += go * S
    grad_offset[n, oy, ox, g, t, 1]  = m * (sum_d go * dS/dy) * offset_scale     (dy)
    grad_offset[n, oy, ox, g, t, 0]  = m * (sum_d go * dS/dx) * offset_scale     (dx)
    grad_input[n, y0+a, x0+b, c]    += go * m * w_ab    (the adjoint: scatter_add)

(the weight outside the channel sum, so that a non-finite weight or gradient
propagates by the same IEEE rule in every backend).

The offset gradient follows DCNv3/v4's border rule, mmcv's
(:data:`refdcn.bilinear.BORDER_MMCV`: 0 for a point on or outside ``y = -1``,
``x = -1``, ``y = H``, ``x = W``; the CUDA kernels gate the backward with
``h_im > -1 && w_im > -1 && h_im < H && w_im < W``); ``convention`` selects
torchvision's rule instead (for the verifier's diagnosis).
"""

import numpy as np

from ..backends import Capabilities

from ..bilinear import (BORDER_MMCV, bilinear_gradient, bilinear_sample, scaled_sampling_point,
                        scatter_add)

NAME = "reference"
DESCRIPTION = "explicit Python loops, float64 (the textbook reference; slow)"

#: The explicit-loop oracle, float64 whatever the input dtype (see refdcn.backends.Capabilities).
CAPABILITIES = Capabilities(device="cpu", compute_dtype="float64", oracle=True, blocked=False)


def _samples(offset, mask, geom):
    """Every sample: ``(n, oy, ox, g, t, y, x, m)`` with its sampling point and weight."""
    taps = geom.tap_list()
    for n in range(geom.batch):
        for oy in range(geom.out_h):
            for ox in range(geom.out_w):
                for g in range(geom.group):
                    for t, (i, j) in enumerate(taps):
                        y = scaled_sampling_point(oy, geom.stride_h, geom.pad_h, i,
                                                  geom.dilation_h, float(offset[n, oy, ox, g, t, 1]),
                                                  geom.centre_h, geom.offset_scale)
                        x = scaled_sampling_point(ox, geom.stride_w, geom.pad_w, j,
                                                  geom.dilation_w, float(offset[n, oy, ox, g, t, 0]),
                                                  geom.centre_w, geom.offset_scale)
                        yield n, oy, ox, g, t, y, x, float(mask[n, oy, ox, g, t])


def forward(input, offset, mask, geom, dtype=None):
    """DCNv3/DCNv4 forward by explicit loops.

    Parameters
    ----------
    input : ndarray, shape (N, H, W, G*D)
    offset : ndarray, shape (N, H_out, W_out, G, K, 2), (dx, dy) pairs
    mask : ndarray, shape (N, H_out, W_out, G, K)
    geom : refdcn.dcnv34.geometry.ModernGeometry
    dtype : ignored; the reference always computes and returns float64.

    Returns
    -------
    out : ndarray, shape (N, H_out, W_out, G*D), float64
    """
    D = geom.group_channels
    out = np.zeros((geom.batch, geom.out_h, geom.out_w, geom.channels))
    for n, oy, ox, g, t, y, x, m in _samples(offset, mask, geom):
        for d in range(D):
            c = g * D + d
            s = bilinear_sample(input[n, :, :, c], geom.height, geom.width, y, x)
            out[n, oy, ox, c] += m * s
    return out


def backward(grad_output, input, offset, mask, geom, dtype=None, convention=BORDER_MMCV):
    """Gradients of :func:`forward` by explicit loops (float64).

    Parameters
    ----------
    grad_output : ndarray, shape (N, H_out, W_out, G*D)
    input, offset, mask, geom : as in :func:`forward`
    dtype : ignored (float64)
    convention : int
        :data:`refdcn.bilinear.BORDER_MMCV` (DCNv3/v4's rule) or
        ``BORDER_TORCHVISION``.

    Returns
    -------
    (grad_input, grad_offset, grad_mask)
        Shapes (N, H, W, G*D), (N, H_out, W_out, G, K, 2), (N, H_out, W_out, G, K).
    """
    H, W, D = geom.height, geom.width, geom.group_channels
    scale = geom.offset_scale
    grad_input = np.zeros(input.shape)
    grad_offset = np.zeros(offset.shape)
    grad_mask = np.zeros(mask.shape)
    for n, oy, ox, g, t, y, x, m in _samples(offset, mask, geom):
        sum_y = sum_x = 0.0
        for d in range(D):
            c = g * D + d
            go = float(grad_output[n, oy, ox, c])
            plane = input[n, :, :, c]
            # the weight: the sample is its coefficient
            grad_mask[n, oy, ox, g, t] += go * bilinear_sample(plane, H, W, y, x)
            # the offsets: the channel sum of go * dS/dy (dS/dx) ...
            ds_dy, ds_dx = bilinear_gradient(plane, H, W, y, x, convention)
            sum_y += go * ds_dy
            sum_x += go * ds_dx
            # the input: the adjoint of sampling
            scatter_add(grad_input[n, :, :, c], H, W, y, x, go * m)
        # ... times the weight and d(y)/d(dy) = offset_scale (outside the channel sum:
        # refdcn's one rule for non-finite values, as in the DCNv2 reference)
        grad_offset[n, oy, ox, g, t, 1] = m * sum_y * scale
        grad_offset[n, oy, ox, g, t, 0] = m * sum_x * scale
    return grad_input, grad_offset, grad_mask
