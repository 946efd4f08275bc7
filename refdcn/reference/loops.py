"""The explicit-loop reference: deformable convolution written like a textbook.

Backend ``"reference"``.  Every line maps to one term of the formula; nothing
is vectorised, so it is slow (use tiny shapes) and obviously right.  It
computes in float64 whatever the input dtype and returns float64 arrays.

The formula
-----------
For image ``n``, output channel ``o`` (in convolution group ``g``), output pixel
``(oy, ox)``, input channel ``c`` of group ``g`` (local index ``cl``), kernel tap
``(i, j)`` with ``k = i*kw + j`` and ``c``'s offset group ``d``::

    kk = d*kh*kw + k                                   # tap index within all groups
    dy = offset[n, 2*kk,     oy, ox]                   # row offset
    dx = offset[n, 2*kk + 1, oy, ox]                   # column offset
    m  = mask[n, kk, oy, ox]            (1 for DCNv1)
    y  = oy*sh - ph + i*dh + dy                         # sampling point
    x  = ox*sw - pw + j*dw + dx
    out[n, o, oy, ox] = bias[o] + sum_{cl, i, j} weight[o, cl, i, j] * m * S(input[n, c], y, x)

with ``S`` the zero-border bilinear sample of :mod:`refdcn.bilinear`.

The backward, for an upstream gradient ``G = dL/d out``, is the same loop with
every term differentiated::

    t = G[n, o, oy, ox] * weight[o, cl, i, j]
    grad_bias[o]              += G[n, o, oy, ox]
    grad_weight[o, cl, i, j]  += G[n, o, oy, ox] * m * S
    grad_mask[n, kk, oy, ox]  += t * S
    grad_offset[n, 2*kk]      += t * m * dS/dy         (convention decides the border)
    grad_offset[n, 2*kk + 1]  += t * m * dS/dx
    grad_input[n, c, y0+a, x0+b] += t * m * w_ab        (for each corner inside the image)
"""

import numpy as np

from ..bilinear import (BORDER_TORCHVISION, bilinear_gradient, bilinear_sample, corner_weights,
                        in_image, locate, sampling_point)

NAME = "reference"
DESCRIPTION = "explicit Python loops, float64 (the textbook reference; slow)"


def _tap_sample_point(offset, n, d, i, j, oy, ox, geom):
    """Sampling point ``(y, x)`` and the offset-channel index of tap (i, j)."""
    kk = (d * geom.kh + i) * geom.kw + j
    y = sampling_point(oy, geom.stride[0], geom.padding[0], i, geom.dilation[0],
                       float(offset[n, 2 * kk, oy, ox]))
    x = sampling_point(ox, geom.stride[1], geom.padding[1], j, geom.dilation[1],
                       float(offset[n, 2 * kk + 1, oy, ox]))
    return kk, y, x


def forward(input, offset, mask, weight, bias, geom, dtype=None):
    """Deformable convolution by explicit loops.

    Parameters
    ----------
    input : ndarray, shape (N, C_in, H, W)
    offset : ndarray, shape (N, 2*D*kh*kw, H_out, W_out)
        Channel ``2*kk`` is dy and ``2*kk + 1`` is dx of ``kk = (d*kh + i)*kw + j``.
    mask : ndarray, shape (N, D*kh*kw, H_out, W_out), or None (DCNv1)
    weight : ndarray, shape (C_out, C_in/groups, kh, kw)
    bias : ndarray, shape (C_out,), or None
    geom : refdcn.geometry.Geometry
    dtype : ignored; the reference always computes in float64.

    Returns
    -------
    out : ndarray, shape (N, C_out, H_out, W_out), float64
    """
    out = np.zeros((geom.batch, geom.out_channels, geom.out_h, geom.out_w))
    c_group = geom.in_per_group
    for n in range(geom.batch):
        for o in range(geom.out_channels):
            g = o // geom.out_per_group
            for oy in range(geom.out_h):
                for ox in range(geom.out_w):
                    acc = 0.0 if bias is None else float(bias[o])
                    for cl in range(c_group):
                        c = g * c_group + cl
                        d = c // geom.in_per_offset_group
                        for i in range(geom.kh):
                            for j in range(geom.kw):
                                kk, y, x = _tap_sample_point(offset, n, d, i, j, oy, ox, geom)
                                m = 1.0 if mask is None else float(mask[n, kk, oy, ox])
                                s = bilinear_sample(input[n, c], geom.height, geom.width, y, x)
                                acc += float(weight[o, cl, i, j]) * m * s
                    out[n, o, oy, ox] = acc
    return out


def backward(grad_output, input, offset, mask, weight, bias, geom, dtype=None,
             convention=BORDER_TORCHVISION):
    """The five gradients of :func:`forward` by explicit loops (float64).

    Parameters
    ----------
    grad_output : ndarray, shape (N, C_out, H_out, W_out)
    input, offset, mask, weight, bias, geom : as in :func:`forward`
    dtype : ignored (float64)
    convention : int
        :data:`refdcn.bilinear.BORDER_TORCHVISION` or ``BORDER_MMCV``.

    Returns
    -------
    (grad_input, grad_offset, grad_mask, grad_weight, grad_bias)
        Shapes of the corresponding inputs; ``grad_mask`` / ``grad_bias`` are
        None when ``mask`` / ``bias`` are None.
    """
    H, W = geom.height, geom.width
    grad_input = np.zeros(input.shape)
    grad_offset = np.zeros(offset.shape)
    grad_mask = None if mask is None else np.zeros(mask.shape)
    grad_weight = np.zeros(weight.shape)
    grad_bias = None if bias is None else np.zeros(bias.shape)
    c_group = geom.in_per_group
    for n in range(geom.batch):
        for o in range(geom.out_channels):
            g = o // geom.out_per_group
            for oy in range(geom.out_h):
                for ox in range(geom.out_w):
                    go = float(grad_output[n, o, oy, ox])
                    if grad_bias is not None:
                        grad_bias[o] += go
                    for cl in range(c_group):
                        c = g * c_group + cl
                        d = c // geom.in_per_offset_group
                        plane = input[n, c]
                        for i in range(geom.kh):
                            for j in range(geom.kw):
                                kk, y, x = _tap_sample_point(offset, n, d, i, j, oy, ox, geom)
                                m = 1.0 if mask is None else float(mask[n, kk, oy, ox])
                                s = bilinear_sample(plane, H, W, y, x)
                                t = go * float(weight[o, cl, i, j])
                                # weight and mask: the sample is their coefficient
                                grad_weight[o, cl, i, j] += go * m * s
                                if grad_mask is not None:
                                    grad_mask[n, kk, oy, ox] += t * s
                                # offset: chain rule through the sampling point
                                ds_dy, ds_dx = bilinear_gradient(plane, H, W, y, x, convention)
                                grad_offset[n, 2 * kk, oy, ox] += t * m * ds_dy
                                grad_offset[n, 2 * kk + 1, oy, ox] += t * m * ds_dx
                                # input: the adjoint of sampling scatters to the four corners
                                active, y0, x0, ly, lx = locate(y, x, H, W, False)
                                if active:
                                    weights = corner_weights(ly, lx)
                                    for corner, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
                                        if in_image(y0 + a, x0 + b, H, W):
                                            grad_input[n, c, y0 + a, x0 + b] += t * m * weights[corner]
    return grad_input, grad_offset, grad_mask, grad_weight, grad_bias
