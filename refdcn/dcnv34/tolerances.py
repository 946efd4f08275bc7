"""Float32 error bounds of DCNv3/DCNv4, derived like :mod:`refdcn.tolerances` (Higham eq. 3.5).

A float32 implementation's result must lie within ``gamma_n * sum|terms|`` of
the float64 reference on the same (float32-rounded) inputs, element by
element, where ``n`` is the longest chain of rounded operations behind the
element and ``sum|terms|`` the sum of the absolute values of its terms:

* output: ``sum_t |m| S(|x|)`` (``S`` has non-negative weights, so ``S(|x|) >= |S(x)|``),
  ``n = K + BILINEAR_OPS + 1``;
* input gradient: the backward on absolute values, ``n = 4*K*P + BILINEAR_OPS``
  (at most four corners of every tap of every pixel reach one input pixel);
* mask gradient: ``sum_d |go| S(|x|)``, ``n = D + BILINEAR_OPS``;
* offset gradient: ``|dS/dy| <= 2 max|plane|``, so ``sum_d |go| * 2 max|x_c| * |m| * |s|``,
  ``n = D + BILINEAR_OPS + 2``.

As in refdcn's DCNv2 bounds, sampling coordinates are assumed to be formed in
float64 (refdcn does); DCNv4's CUDA kernels form them in ``opmath_t`` (float32
for float32 inputs) and can exceed these bounds near grid lines.
"""

import numpy as np

from ..tolerances import BILINEAR_OPS, gamma
from . import api

__all__ = ["float32_bounds", "pack_bounds"]


def float32_bounds(input, offset, mask, grad_output, attrs):
    """Element-wise float32 bounds for DCNv3's output and gradients (float64 arrays in).

    Returns ``{"output", "input", "offset", "mask"}`` shaped like DCNv3's
    results (map them to DCNv4's packed layout with :func:`pack_bounds`).
    """
    x, m, go = (np.abs(np.asarray(a, np.float64)) for a in (input, mask, grad_output))
    off = np.asarray(offset, np.float64)
    geom = api.check_dcnv3(x, off, m, **attrs)
    K, D, G, P = geom.taps, geom.group_channels, geom.group, geom.out_pixels
    tiny = np.finfo(np.float32).tiny
    out = api.dcnv3(x, off, m, **attrs)
    g = api.dcnv3_backward(go, x, off, m, **attrs)
    n, ho, wo = geom.batch, geom.out_h, geom.out_w
    plane_max = x.reshape(n, -1, G, D).max(axis=1) if x.size else np.zeros((n, G, D))
    per_tap = np.einsum("nhwgd,ngd->nhwg", go.reshape(n, ho, wo, G, D), 2 * plane_max)
    per_tap = per_tap[..., None] * m.reshape(n, ho, wo, G, K) * abs(geom.offset_scale)
    off_scale = np.repeat(per_tap[..., None], 2, axis=-1).reshape(off.shape)
    return {
        "output": gamma(K + BILINEAR_OPS + 1) * out + tiny,
        "input": gamma(4 * K * P + BILINEAR_OPS) * g.input + tiny,
        "mask": gamma(D + BILINEAR_OPS) * g.mask + tiny,
        "offset": gamma(D + BILINEAR_OPS + 2) * off_scale + tiny,
    }


def pack_bounds(bounds, packed_shape, group, taps):
    """DCNv3-shaped bounds -> ``{"output", "input", "offset_mask"}`` in DCNv4's layout
    (padding channels: bound ``tiny``, i.e. their gradient must be 0)."""
    n, ho, wo, _ = packed_shape
    packed = np.full(packed_shape, np.finfo(np.float32).tiny)
    per = np.concatenate([bounds["offset"].reshape(n, ho, wo, group, 2 * taps),
                          bounds["mask"].reshape(n, ho, wo, group, taps)], axis=-1)
    packed[..., :3 * group * taps] = per.reshape(n, ho, wo, -1)
    return {"output": bounds["output"], "input": bounds["input"], "offset_mask": packed}
