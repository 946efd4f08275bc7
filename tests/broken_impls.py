"""Deliberately broken implementations of deformable convolution, for the verifier's tests.

:func:`make` builds a small, independent NumPy implementation (it shares no code
with refdcn: its own sampler, its own index arithmetic) with torchvision's
signature on NumPy arrays.  ``make(None)`` is correct; every other ``bug``
reproduces one known mistake:

==================  =================================================================
``planar``          offsets read planar: dy of tap k at k, dx at K + k (seed)
``xy_pairs``        offset pairs read as (dx, dy) (DCNv3/v4 order, row-major taps)
``dcnv4``           (dx, dy) pairs and x-major taps t = j*kh + i, mask too (DCNv3/v4)
``float32_coords``  sampling points formed in float32
``centre_shift``    base grid around a 3x3 kernel's centre: + (1 - k//2) (seed)
``edge_clamp``      the seed's sampler: clamp to the padded frame, doubled edge weights
``mask_ignored``    the mask is not applied
``kh_index``        offset/mask tap index i*kh + j instead of i*kw + j
``bias_dropped``    the bias is not added
``batch_block``     images in blocks of 2, block b reads offsets [b : b+2] not [2b : 2b+2]
``msra_v1``         the MSRA DCNv1 sampler: 0 unless 0 <= y < H, 0 <= x < W; the edge
                    row/column repeated in [H-1, H) (MXNet DCNv1, OpenVINO pad=false)
``tvm``             TVM's sampler: 0 when y < 0 or x < 0, torchvision's rule otherwise
``clamp``           points clamped into [0, H-1] x [0, W-1] (replicate padding)
``mask_sigmoid``    sigmoid(mask) applied inside the op
``mask_softmax``    softmax over the taps of each offset group applied to the mask (DCNv3)
``float32_compute`` computes in float32 whatever it is given (OpenVINO's CPU plugin)
``stride_w_rows``   the row stride taken from stride_w (wrong when strides differ)
``bias_twice``      the bias added twice when groups > 1
``dilation_h_cols`` the column dilation taken from dilation_h
==================  =================================================================

Each is exposed as a module-level function of the same name (and ``correct``),
so the CLI can load them as ``broken_impls:planar``.  ``mmcv_gradients`` is a
backward with the mmcv offset-gradient convention (from refdcn, deliberately
using the other convention than the one checked).
"""

import numpy as np

BUGS = ("planar", "xy_pairs", "dcnv4", "float32_coords", "centre_shift", "edge_clamp",
        "mask_ignored", "kh_index", "bias_dropped", "batch_block", "msra_v1", "tvm", "clamp",
        "mask_sigmoid", "mask_softmax", "float32_compute", "stride_w_rows", "bias_twice",
        "dilation_h_cols")


def _bilinear(plane, y, x):
    """torchvision's zero-border bilinear sample of ``plane`` (H, W) at arrays ``y``, ``x``."""
    H, W = plane.shape
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    total = np.zeros(np.shape(y))
    for a, wy in ((0, 1 - fy), (1, fy)):
        for b, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = (y0 + a).astype(int), (x0 + b).astype(int)
            ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            v = plane[np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]
            total += np.where(ok, wy * wx * v, 0.0)
    outside = (y <= -1) | (y >= H) | (x <= -1) | (x >= W)
    return np.where(outside, 0.0, total)


def _msra_v1_sample(plane, y, x):
    """The 2017 MXNet DCNv1 sampler: inside [0, H) x [0, W) only, the high corner clamped."""
    H, W = plane.shape
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    v = lambda r, c: plane[np.clip(r, 0, H - 1).astype(int), np.clip(c, 0, W - 1).astype(int)]
    total = (1 - fy) * (1 - fx) * v(y0, x0) + (1 - fy) * fx * v(y0, x1) + \
        fy * (1 - fx) * v(y1, x0) + fy * fx * v(y1, x1)
    return np.where((y >= 0) & (y < H) & (x >= 0) & (x < W), total, 0.0)


def _seed_sample(plane, y, x, pad):
    """The seed project's sampler: padded frame, clamped corners and point, no zero band."""
    H, W = plane.shape
    ph, pw = pad
    padded = np.zeros((H + 2 * ph, W + 2 * pw))
    padded[ph:ph + H, pw:pw + W] = plane
    Hp, Wp = padded.shape
    p_y, p_x = y + ph, x + pw
    lt_y = np.clip(np.floor(p_y), 0, Hp - 1)
    lt_x = np.clip(np.floor(p_x), 0, Wp - 1)
    rb_y = np.clip(np.floor(p_y) + 1, 0, Hp - 1)
    rb_x = np.clip(np.floor(p_x) + 1, 0, Wp - 1)
    p_y, p_x = np.clip(p_y, 0, Hp - 1), np.clip(p_x, 0, Wp - 1)
    g_lt = (1 + (lt_y - p_y)) * (1 + (lt_x - p_x))
    g_rb = (1 - (rb_y - p_y)) * (1 - (rb_x - p_x))
    g_lb = (1 + (lt_y - p_y)) * (1 - (rb_x - p_x))
    g_rt = (1 - (rb_y - p_y)) * (1 + (lt_x - p_x))
    v = lambda yy, xx: padded[yy.astype(int), xx.astype(int)]
    return g_lt * v(lt_y, lt_x) + g_rb * v(rb_y, rb_x) + g_lb * v(lt_y, rb_x) + \
        g_rt * v(rb_y, lt_x)


def make(bug=None):
    """A deformable convolution with torchvision's signature, with ``bug`` (None: correct)."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}")

    def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                      dilation=(1, 1), mask=None):
        if bug == "float32_compute":
            f32 = lambda a: None if a is None else np.asarray(a, np.float32)
            out = _forward(None, f32(input), f32(offset), f32(weight), f32(bias), stride,
                           padding, dilation, f32(mask))
            return out.astype(np.float32).astype(np.asarray(input).dtype)
        if mask is not None and bug == "mask_sigmoid":
            mask = 1 / (1 + np.exp(-np.asarray(mask, np.float64)))
        if mask is not None and bug == "mask_softmax":
            K = weight.shape[2] * weight.shape[3]
            per = np.asarray(mask, np.float64).reshape(mask.shape[0], mask.shape[1] // K, K,
                                                       *mask.shape[2:])
            e = np.exp(per - per.max(axis=2, keepdims=True))
            mask = (e / e.sum(axis=2, keepdims=True)).reshape(mask.shape)
        if bug == "batch_block":
            return _blocked(input, offset, weight, bias, stride, padding, dilation, mask)
        return _forward(bug, input, offset, weight, bias, stride, padding, dilation, mask)
    deform_conv2d.__name__ = bug or "correct"
    return deform_conv2d


def _blocked(input, offset, weight, bias, stride, padding, dilation, mask, step=2):
    outs = []
    for block, start in enumerate(range(0, input.shape[0], step)):
        stop = min(start + step, input.shape[0])
        wrong = slice(block, block + stop - start)          # should be slice(start, stop)
        outs.append(_forward(None, input[start:stop], offset[wrong], weight, bias, stride,
                             padding, dilation, None if mask is None else mask[wrong]))
    if not outs:
        return _forward(None, input, offset, weight, bias, stride, padding, dilation, mask)
    return np.concatenate(outs)


def _forward(bug, input, offset, weight, bias, stride, padding, dilation, mask):
    N, C, H, W = input.shape
    O, Cg, kh, kw = weight.shape
    K = kh * kw
    groups, D = C // Cg, offset.shape[1] // (2 * K)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho, Wo = offset.shape[2:]
    oy = np.arange(Ho)[:, None].astype(np.float64)
    ox = np.arange(Wo)[None, :].astype(np.float64)
    cols = np.zeros((N, C, K, Ho, Wo))
    for n in range(N):
        for d in range(D):
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    if bug == "planar":
                        dy, dx = offset[n, d * 2 * K + k], offset[n, d * 2 * K + K + k]
                        m_ch = d * K + k
                    elif bug == "xy_pairs":
                        dy, dx = offset[n, 2 * (d * K + k) + 1], offset[n, 2 * (d * K + k)]
                        m_ch = d * K + k
                    elif bug == "dcnv4":
                        t = j * kh + i
                        dy, dx = offset[n, 2 * (d * K + t) + 1], offset[n, 2 * (d * K + t)]
                        m_ch = d * K + t
                    elif bug == "kh_index":
                        t = i * kh + j
                        dy, dx = offset[n, 2 * (d * K + t)], offset[n, 2 * (d * K + t) + 1]
                        m_ch = d * K + t
                    else:
                        dy, dx = offset[n, 2 * (d * K + k)], offset[n, 2 * (d * K + k) + 1]
                        m_ch = d * K + k
                    by, bx = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                    if bug == "stride_w_rows":
                        by = oy * sw - ph + i * dh
                    if bug == "dilation_h_cols":
                        bx = ox * sw - pw + j * dh
                    if bug == "centre_shift":
                        by, bx = by + (1 - kh // 2), bx + (1 - kw // 2)
                    if bug == "float32_coords":
                        y = by.astype(np.float32) + np.asarray(dy, np.float32)
                        x = bx.astype(np.float32) + np.asarray(dx, np.float32)
                        y, x = y.astype(np.float64), x.astype(np.float64)
                    else:
                        y, x = by + dy, bx + dx
                    m = 1.0 if mask is None or bug == "mask_ignored" else mask[n, m_ch]
                    for c in range(d * (C // D), (d + 1) * (C // D)):
                        plane = input[n, c].astype(np.float64)
                        if bug == "edge_clamp":
                            s = _seed_sample(plane, y, x, (ph, pw))
                        elif bug == "msra_v1":
                            s = _msra_v1_sample(plane, y, x)
                        elif bug == "tvm":
                            s = np.where((y < 0) | (x < 0), 0.0, _bilinear(plane, y, x))
                        elif bug == "clamp":
                            s = _bilinear(plane, np.clip(y, 0, H - 1), np.clip(x, 0, W - 1))
                        else:
                            s = _bilinear(input[n, c].astype(np.float64), y, x)
                        cols[n, c, k] = m * s
    out = np.zeros((N, O, Ho, Wo))
    Og = O // groups
    for g in range(groups):
        w = weight[g * Og:(g + 1) * Og].reshape(Og, Cg * K)
        c = cols[:, g * Cg:(g + 1) * Cg].reshape(N, Cg * K, Ho * Wo)
        out[:, g * Og:(g + 1) * Og] = np.einsum("or,nrp->nop", w, c).reshape(N, Og, Ho, Wo)
    if bias is not None and bug != "bias_dropped":
        out += bias[None, :, None, None]
    if bias is not None and bug == "bias_twice" and groups > 1:
        out += bias[None, :, None, None]
    return out.astype(input.dtype)


correct = make(None)
planar = make("planar")
xy_pairs = make("xy_pairs")
dcnv4 = make("dcnv4")
float32_coords = make("float32_coords")
centre_shift = make("centre_shift")
edge_clamp = make("edge_clamp")
mask_ignored = make("mask_ignored")
kh_index = make("kh_index")
bias_dropped = make("bias_dropped")
batch_block = make("batch_block")
msra_v1 = make("msra_v1")
tvm = make("tvm")
clamp = make("clamp")
mask_sigmoid = make("mask_sigmoid")
mask_softmax = make("mask_softmax")
float32_compute = make("float32_compute")
stride_w_rows = make("stride_w_rows")
bias_twice = make("bias_twice")
dilation_h_cols = make("dilation_h_cols")


def mmcv_gradients(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    """Gradients with the mmcv offset-gradient rule, as a sequence of five."""
    import refdcn
    return tuple(refdcn.deform_conv2d_backward(grad_output, input, offset, weight, bias, stride,
                                               padding, dilation, mask, backend="numpy",
                                               convention="mmcv"))


def torchvision_gradients_mapping(grad_output, input, offset, weight, bias, stride, padding,
                                  dilation, mask):
    """Correct (torchvision-rule) gradients, returned as a mapping with ``grad_*`` keys."""
    import refdcn
    g = refdcn.deform_conv2d_backward(grad_output, input, offset, weight, bias, stride, padding,
                                      dilation, mask, backend="numpy")
    return {f"grad_{k}": v for k, v in g._asdict().items()}


def wrong_signature(input, offset):
    """Cannot take torchvision's arguments (for the usage-error test)."""
    return input


def raises(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           mask=None):
    """Fails on every call (for the error-row test)."""
    raise RuntimeError("this implementation always fails")


def wrong_shape(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), mask=None):
    """Drops the last output column."""
    return correct(input, offset, weight, bias, stride, padding, dilation, mask)[..., :-1]


def four_gradients(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    """Returns only four of the five gradients."""
    return mmcv_gradients(grad_output, input, offset, weight, bias, stride, padding, dilation,
                          mask)[:4]
