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
every term differentiated.  It goes through the *column gradient*
``t = dL/d(m * S)`` of each (image, channel, tap, pixel): the sum over the
output channels of the group comes first, as in every im2col + GEMM backend::

    t = sum_{o in group g} G[n, o, oy, ox] * weight[o, cl, i, j]
    grad_bias[o]                  += G[n, o, oy, ox]
    grad_weight[o, cl, i, j]      += G[n, o, oy, ox] * (m * S)
    grad_mask[n, kk, oy, ox]      += t * S
    grad_offset[n, 2*kk, oy, ox]   = m * sum_c t * dS/dy   (the convention decides y = -1, x = -1)
    grad_offset[n, 2*kk+1, oy, ox] = m * sum_c t * dS/dx
    grad_input[n, c, y0+a, x0+b]  += t * m * w_ab      (each corner inside the image)

Non-finite values (the IEEE rule, the same on every backend): the gradients are
these expressions evaluated in IEEE arithmetic in exactly this grouping -- the
output-channel sum inside ``t``, the mask outside the channel sum of the offset
gradient, and ``dS/dy``, ``dS/dx`` per channel.  Products are associative
class-wise (NaN iff a factor is NaN or 0 meets inf), and a sum is NaN iff a
term is NaN or +inf meets -inf, so every order of the remaining sums gives the
same NaN/+inf/-inf/finite pattern (``tests/test_hardening.py::test_nonfinite``).

The derivatives ``dS/dy``, ``dS/dx`` and the corner weights ``w_ab`` are
those of :mod:`refdcn.bilinear` (its module docstring derives them).  The one
subtle point of the backward is the border: the forward and the input
gradient treat a sample as *active* on the open square ``(-1, H) x (-1, W)``
(on ``y = -1`` all its weight falls on the zero border), while the offset
gradient on the lines ``y = -1`` / ``x = -1`` is the inward one-sided
derivative under ``convention=BORDER_TORCHVISION`` (torchvision) and 0 under
``BORDER_MMCV`` (mmcv).  ``locate(..., closed_at_minus_one=...)`` is where that
choice is made (in :func:`refdcn.bilinear.bilinear_gradient`), and
:func:`backward` says which rule each gradient uses.
"""

import numpy as np

from ..bilinear import (BORDER_TORCHVISION, bilinear_gradient, bilinear_sample, in_image, locate,
                        sampling_point, scatter_corners)
from ..geometry import mask_channel, offset_channel
from ..backends import Capabilities

NAME = "reference"
CAPABILITIES = Capabilities(device="cpu", compute_dtype="float64", oracle=True, blocked=False)
DESCRIPTION = "explicit Python loops, float64 (the textbook reference; slow)"


def _tap(offset, mask, n, d, i, j, oy, ox, geom):
    """Tap (i, j) of offset group d at output pixel (oy, ox): ``kk``, ``(y, x)``, ``m``.

    ``kk`` is the mask channel (and ``2*kk``, ``2*kk + 1`` the offset channels)
    of the tap; ``m`` is 1 without a mask (DCNv1).
    """
    kh, kw = geom.kh, geom.kw
    kk = mask_channel(d, i, j, kh, kw)
    y = sampling_point(oy, geom.stride[0], geom.padding[0], i, geom.dilation[0],
                       float(offset[n, offset_channel(d, i, j, kh, kw, 0), oy, ox]))
    x = sampling_point(ox, geom.stride[1], geom.padding[1], j, geom.dilation[1],
                       float(offset[n, offset_channel(d, i, j, kh, kw, 1), oy, ox]))
    m = 1.0 if mask is None else float(mask[n, kk, oy, ox])
    return kk, y, x, m


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
    H, W = geom.height, geom.width
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
                                kk, y, x, m = _tap(offset, mask, n, d, i, j, oy, ox, geom)
                                s = bilinear_sample(input[n, c], H, W, y, x)
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
        :data:`refdcn.bilinear.BORDER_TORCHVISION` or ``BORDER_MMCV``: the
        offset gradient of a sample on exactly ``y = -1`` or ``x = -1``.

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
    # bias: d out / d bias[o] = 1
    grad_bias = None if bias is None else grad_output.sum(axis=(0, 2, 3), dtype=np.float64)
    c_group = geom.in_per_group
    out_group = geom.out_per_group
    for n in range(geom.batch):
        for c in range(geom.in_channels):
            g, cl = divmod(c, c_group)
            d = c // geom.in_per_offset_group
            plane = input[n, c]
            for i in range(geom.kh):
                for j in range(geom.kw):
                    for oy in range(geom.out_h):
                        for ox in range(geom.out_w):
                            kk, y, x, m = _tap(offset, mask, n, d, i, j, oy, ox, geom)
                            s = bilinear_sample(plane, H, W, y, x)
                            # the column gradient t = dL/d(m * S): the output channels first
                            t = 0.0
                            for o in range(g * out_group, (g + 1) * out_group):
                                go = float(grad_output[n, o, oy, ox])
                                t += go * float(weight[o, cl, i, j])
                                # weight: d out / d weight[o, cl, i, j] = m * S
                                grad_weight[o, cl, i, j] += go * (m * s)
                            # mask: d out / d m = weight * S
                            if grad_mask is not None:
                                grad_mask[n, kk, oy, ox] += t * s
                            # offset: d out / d dy = weight * m * dS/dy (as dy/d dy = 1), the
                            # same for dx; m multiplies the channel sum, after the loops.  On
                            # y = -1 or x = -1 the convention decides: BORDER_TORCHVISION, the
                            # inward one-sided derivative (locate with closed_at_minus_one=True);
                            # BORDER_MMCV, 0 (open square)
                            ds_dy, ds_dx = bilinear_gradient(plane, H, W, y, x, convention)
                            grad_offset[n, 2 * kk, oy, ox] += t * ds_dy
                            grad_offset[n, 2 * kk + 1, oy, ox] += t * ds_dx
                            # input: S = sum_ab w_ab * input[n, c, y0+a, x0+b], so
                            # d out / d input[n, c, y0+a, x0+b] = weight * m * w_ab
                            # (the adjoint of sampling: the forward's open square, and only
                            # the corners inside the image)
                            active, y0, x0, ly, lx = locate(y, x, H, W, closed_at_minus_one=False)
                            if active:
                                for row, col, w_ab in scatter_corners(y0, x0, ly, lx):
                                    if in_image(row, col, H, W):
                                        grad_input[n, c, row, col] += t * m * w_ab
    if mask is not None:      # the mask multiplies the channel sum of the offset gradient
        grad_offset *= np.repeat(np.asarray(mask, dtype=np.float64), 2, axis=1)
    return grad_input, grad_offset, grad_mask, grad_weight, grad_bias
