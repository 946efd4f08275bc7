"""NumPy models of how real float32 kernels round, for the float32 tier's tests.

Each model computes deformable convolution and its five gradients entirely in
float32, forming the sampling point, its fraction and the bilinear weights the
way one family of real kernels does (read in their sources; see
``dcn-implementations.md`` and ``peers.md``):

``torchvision``  ``y = float(h_in + i*dil) + dy``; ``l = y - floor(y)``; weights
                 ``1 - l`` and ``l``; col2im weight ``1 - |y - y_p|``;
                 offset gradient ``l_x (v_YX - v_yX) + (1 - l_x)(v_Yx - v_yx)``
                 without an early return (torchvision convention)
                 (``torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp``).
``msra``         im2col as torchvision; col2im ``get_gradient_weight``: the low
                 row ``(h + 1 - y)``, the high row ``(y + 1 - h)`` with ``y + 1``
                 rounded in float32; ``get_coordinate_weight`` with
                 ``(x_low + 1 - x)`` and ``(x - x_low)``; 0 on and beyond -1 / H
                 (mmcv convention) (mmcv ``modulated_deform_conv_cuda_kernel.cuh``,
                 Paddle ``deformable_conv_functor``, CharlesShang/DCNv2).
``mindspore``    the integer part from ``floor(dy)``, the fraction from the
                 offset alone, ``(dy + 1) - (floor(dy) + 1)`` in float32, and
                 every weight from that fraction (torchvision convention)
                 (MindSpore ``deformable_offsets_cpu_kernel.cc``).

Matrix products and sums are float32 too (BLAS sgemm, float32 accumulation).
``make(form, perturb=...)`` returns ``(forward, backward)`` with torchvision's
signature on NumPy arrays (``backward`` as ``refdcn verify --backward``);
``perturb`` changes the sampling point, for the detection-power tests.
"""

import numpy as np

f32 = np.float32
FORMS = ("torchvision", "msra", "mindspore")


def _axis(form, base, off, shift):
    """``(low, frac, coord)`` of one axis: int64 low corner, float32 fraction and point."""
    off = off + f32(shift) if shift else off
    coord = base.astype(f32) + off
    if form == "mindspore":
        fo = np.floor(off)
        return base + fo.astype(np.int64), (off + f32(1)) - (fo + f32(1)), coord
    low = np.floor(coord)
    return low.astype(np.int64), coord - low, coord


def _run(form, grad_output, input, offset, weight, bias, stride, padding, dilation, mask,
         perturb):
    x = np.asarray(input, f32)
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    K, G = kh * kw, C // Cg
    D = offset.shape[1] // (2 * K)
    Ho, Wo = offset.shape[2:]
    P, Cd, Og = Ho * Wo, C // D, O // G
    off = np.asarray(offset, f32).reshape(N, D, K, 2, Ho, Wo)
    i, j = np.divmod(np.arange(K), kw)
    base_y = (np.arange(Ho)[None, :, None] * stride[0] - padding[0] + i[:, None, None] *
              dilation[0]) + np.zeros((1, 1, Wo), np.int64)
    base_x = (np.arange(Wo)[None, None, :] * stride[1] - padding[1] + j[:, None, None] *
              dilation[1]) + np.zeros((1, Ho, 1), np.int64)
    shift = perturb or {}
    y0, ly, y = _axis(form, base_y, off[:, :, :, 0], shift.get("y", 0.0))
    x0, lx, xc = _axis(form, base_x, off[:, :, :, 1], shift.get("x", 0.0))
    inside = (y > -1) & (y < H) & (xc > -1) & (xc < W)
    if "band" in shift:     # the zero band's edges moved inwards by shift["band"] pixels
        b = f32(shift["band"])
        inside = (y > -1 + b) & (y < H - b) & (xc > -1 + b) & (xc < W - b)
    m = np.ones((N, D, K, Ho, Wo), f32) if mask is None else \
        np.asarray(mask, f32).reshape(N, D, K, Ho, Wo)
    xt = x.reshape(N, D, Cd, H * W).transpose(0, 1, 3, 2)          # (N, D, HW, Cd)
    n_i = np.arange(N)[:, None, None, None, None]
    d_i = np.arange(D)[None, :, None, None, None]

    def corner(r, c):
        ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        v = xt[n_i, d_i, np.where(ok, r * W + c, 0)]                # (N, D, K, Ho, Wo, Cd)
        return np.where(ok[..., None], v, f32(0)), ok

    (v00, ok00), (v01, ok01) = corner(y0, x0), corner(y0, x0 + 1)
    (v10, ok10), (v11, ok11) = corner(y0 + 1, x0), corner(y0 + 1, x0 + 1)
    hy, hx = f32(1) - ly, f32(1) - lx
    e = lambda a: a[..., None]
    S = (e(hy * hx) * v00 + e(hy * lx) * v01) + (e(ly * hx) * v10 + e(ly * lx) * v11)
    S = np.where(e(inside), S, f32(0))                              # (N, D, K, Ho, Wo, Cd)
    to_cols = lambda a: a.transpose(0, 1, 5, 2, 3, 4).reshape(N, C, K, P)
    cols = to_cols(S * e(m))
    wg = np.asarray(weight, f32).reshape(G, Og, Cg * K)
    cg = cols.reshape(N, G, Cg * K, P)
    out = np.matmul(wg[None], cg).reshape(N, O, Ho, Wo)
    if bias is not None:
        out = out + np.asarray(bias, f32)[None, :, None, None]
    result = {"output": out}
    if grad_output is None:
        return result
    g = np.asarray(grad_output, f32).reshape(N, G, Og, P)
    colg = np.matmul(wg.transpose(0, 2, 1)[None], g).reshape(N, D, Cd, K, Ho, Wo)
    colg = colg.transpose(0, 1, 3, 4, 5, 2)                         # (N, D, K, Ho, Wo, Cd)
    result["weight"] = np.matmul(g, cg.transpose(0, 1, 3, 2)).sum(axis=0, dtype=f32) \
        .reshape(weight.shape)
    result["bias"] = None if bias is None else g.sum(axis=(0, 3), dtype=f32).reshape(O)
    result["mask"] = None if mask is None else (colg * S).sum(axis=-1, dtype=f32) \
        .reshape(mask.shape)
    # offset gradient
    if form == "msra":      # get_coordinate_weight: (x_low + 1 - x) and (x - x_low)
        wx0, wx1 = (x0 + 1).astype(f32) - xc, xc - x0.astype(f32)
        wy0, wy1 = (y0 + 1).astype(f32) - y, y - y0.astype(f32)
        live = inside
    else:                   # torchvision: no early return; corner validity only
        wx0, wx1, wy0, wy1 = hx, lx, hy, ly
        live = np.ones_like(inside)
    d_y = e(wx0) * (v10 - v00) + e(wx1) * (v11 - v01)
    d_x = e(wy0) * (v01 - v00) + e(wy1) * (v11 - v10)
    cm = colg * e(m)
    g_y = np.where(live, (cm * d_y).sum(axis=-1, dtype=f32), f32(0))
    g_x = np.where(live, (cm * d_x).sum(axis=-1, dtype=f32), f32(0))
    result["offset"] = np.stack([g_y, g_x], axis=3).reshape(offset.shape)
    # input gradient: scatter to the four corners with the col2im weights
    if form == "msra":      # get_gradient_weight
        ry0, ry1 = (y0 + 1).astype(f32) - y, (y + f32(1)) - (y0 + 1).astype(f32)
        rx0, rx1 = (x0 + 1).astype(f32) - xc, (xc + f32(1)) - (x0 + 1).astype(f32)
    elif form == "torchvision":     # 1 - |y - y_p|
        ry0, ry1 = f32(1) - np.abs(y - y0.astype(f32)), f32(1) - np.abs(y - (y0 + 1).astype(f32))
        rx0, rx1 = f32(1) - np.abs(xc - x0.astype(f32)), \
            f32(1) - np.abs(xc - (x0 + 1).astype(f32))
    else:
        ry0, ry1, rx0, rx1 = hy, ly, hx, lx
    grad_in = np.zeros((N, D, H * W, Cd), f32)
    for wy, wx, dr, dc, ok in ((ry0, rx0, 0, 0, ok00), (ry0, rx1, 0, 1, ok01),
                               (ry1, rx0, 1, 0, ok10), (ry1, rx1, 1, 1, ok11)):
        ok = ok & inside
        val = cm * e(wy * wx)
        idx = np.where(ok, (y0 + dr) * W + (x0 + dc), 0)
        np.add.at(grad_in, (np.broadcast_to(n_i, idx.shape)[ok],
                            np.broadcast_to(d_i, idx.shape)[ok], idx[ok]), val[ok])
    result["input"] = grad_in.transpose(0, 1, 3, 2).reshape(N, C, H, W)
    return result


def make(form, perturb=None):
    """``(forward, backward)`` of the model ``form`` (see the module docstring)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; got {form!r}")

    def forward(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), mask=None):
        return _run(form, None, input, offset, weight, bias, stride, padding, dilation, mask,
                    perturb)["output"]

    def backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
        r = _run(form, grad_output, input, offset, weight, bias, stride, padding, dilation,
                 mask, perturb)
        return {k: r[k] for k in ("input", "offset", "mask", "weight", "bias")}

    return forward, backward


torchvision_forward, torchvision_backward = make("torchvision")
msra_forward, msra_backward = make("msra")
mindspore_forward, mindspore_backward = make("mindspore")
