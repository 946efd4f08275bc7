"""Known alternative conventions, each as a variant of the reference.

Other implementations of deformable convolution disagree with torchvision in
a handful of known ways (see ``dcn-implementations.md``, sections b and c).
Each :class:`Variant` here reproduces one of them *on refdcn's own kernels*:
it transforms the inputs (permutes the offset channels, shifts or rounds the
sampling points, drops the mask, ...), runs refdcn's vectorised NumPy backend
in float64, and maps the gradients back to the caller's layout.  The
diagnosis (:mod:`refdcn.verify.diagnosis`) then asks which variant the
implementation under test agrees with.

A variant predicts only the quantities it models (``output`` and some of the
gradients ``input``, ``offset``, ``mask``, ``weight``, ``bias``); the others
are left out of its prediction and are not used to judge it.

=========================  ==================================================
key                        what the implementation does differently
=========================  ==================================================
``planar``                 reads offsets planar: per offset group all dy, then all dx (seed)
``xy_pairs``               reads (dx, dy) pairs instead of (dy, dx)
``dcnv4``                  (dx, dy) pairs and x-major taps (DCNv3/DCNv4 layout)
``convention``             the other offset-gradient convention at y = -1 / x = -1
``float32_coordinates``    sampling points formed in float32 (float32(y0) + float32(dy))
``float32_rounded``        float64 sampling points rounded to float32 (ONNX reference)
``centre_shift``           base grid around a 3x3 kernel's centre (seed, k != 3)
``edge_clamp``             samples clamped to the padded edge, weights doubled (seed, padding 0)
``msra_v1_border``         MSRA DCNv1 border: no band below 0, edge repeated in (H-1, H)
``tvm_border``             TVM's border: no band below 0, partial band (H-1, H)
``clamp_to_edge``          points clamped into the image (replicate padding)
``mask_sigmoid``           sigmoid(mask) applied inside the op
``mask_softmax``           softmax over the taps of the mask inside the op (DCNv3)
``mask_ignored``           the mask is not applied
``kh_index``               tap index i*kh + j instead of i*kw + j (non-square kernels)
``bias_dropped``           the bias is not added
=========================  ==================================================
"""

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .. import api, layouts
from ..bilinear import sampling_point
from ..geometry import check_arguments

__all__ = ["Variant", "VARIANTS", "get_variant", "base_grid", "sampling_points", "evaluate"]


@dataclass(frozen=True)
class Variant:
    """One alternative convention.

    ``applies(case, geom)`` says whether it can differ from the reference on
    this case; ``predict(case, geom, convention)`` returns the quantities it
    models as float64 arrays.  An ``approximate`` variant models a precision
    loss: implementations that have it also round other intermediate values
    (ONNX's reference evaluator computes 1 - frac in float32 too), so it is
    matched within float32 rounding rather than exactly (see
    :func:`refdcn.verify.diagnosis.diagnose`).
    """
    key: str
    title: str
    detail: str
    fix: str
    applies: Callable
    predict: Callable
    gradients_only: bool = False
    approximate: bool = False


def evaluate(case, convention, **changes):
    """Output and five gradients of ``case`` (with ``changes`` to its arrays), float64."""
    c = replace(case, **changes).astype(np.float64)
    out = api.deform_conv2d(*c.args(), backend="numpy")
    g = api.deform_conv2d_backward(c.grad_output, *c.args(), backend="numpy",
                                   convention=convention)
    return {"output": out, **g._asdict()}


def sampling_points(geom, offset=None):
    """Sampling points of every tap, laid out like the offset tensor.

    Returns an array of shape (N, 2*D*kh*kw, H_out, W_out) (N = 1 without
    ``offset``: the regular grid): channel
    :func:`refdcn.geometry.offset_channel` ``(d, i, j, kh, kw, 0)`` holds
    :func:`refdcn.bilinear.sampling_point` of the row, ``... 1)`` of the column.
    """
    K = geom.taps
    off = np.zeros((1, 2 * geom.offset_groups * K, geom.out_h, geom.out_w)) if offset is None \
        else np.asarray(offset, dtype=np.float64)
    off = off.reshape(off.shape[0], geom.offset_groups, K, 2, geom.out_h, geom.out_w)
    i, j = np.divmod(np.arange(K), geom.kw)
    oy = np.arange(geom.out_h)[None, :, None]
    ox = np.arange(geom.out_w)[None, None, :]
    points = np.empty_like(off)
    points[:, :, :, 0] = sampling_point(oy, geom.stride[0], geom.padding[0], i[:, None, None],
                                        geom.dilation[0], off[:, :, :, 0])
    points[:, :, :, 1] = sampling_point(ox, geom.stride[1], geom.padding[1], j[:, None, None],
                                        geom.dilation[1], off[:, :, :, 1])
    return points.reshape(off.shape[0], -1, geom.out_h, geom.out_w)


def base_grid(geom):
    """Sampling points of zero offsets, (1, 2*D*kh*kw, H_out, W_out) (see :func:`sampling_points`)."""
    return sampling_points(geom)


def _nonzero(a):
    return a is not None and a.size > 0 and bool(np.any(np.asarray(a) != 0))


# ------------------------------------------------------------------ layouts
def _planar(case, geom, convention):
    D = geom.offset_groups
    r = evaluate(case, convention, offset=layouts.planar_to_torchvision(case.offset, D))
    r["offset"] = layouts.torchvision_to_planar(r["offset"], D)
    return r


def _xy_pairs(case, geom, convention):
    r = evaluate(case, convention, offset=layouts.swap_offset_pairs(case.offset))
    r["offset"] = layouts.swap_offset_pairs(r["offset"])
    return r


def _dcnv4(case, geom, convention):
    kernel, D = (geom.kh, geom.kw), geom.offset_groups
    changes = dict(offset=layouts.dcnv4_to_torchvision(case.offset, kernel, D))
    if case.mask is not None:
        changes["mask"] = layouts.dcnv4_mask_to_torchvision(case.mask, kernel, D)
    r = evaluate(case, convention, **changes)
    r["offset"] = layouts.torchvision_to_dcnv4(r["offset"], kernel, D)
    if r["mask"] is not None:
        r["mask"] = layouts.torchvision_mask_to_dcnv4(r["mask"], kernel, D)
    return r


# ------------------------------------------------------------------ gradient convention
def other_convention(convention):
    """The convention that is not ``convention``."""
    return "mmcv" if convention == "torchvision" else "torchvision"


def _convention(case, geom, convention):
    r = evaluate(case, other_convention(convention))
    del r["output"]
    return r


# ------------------------------------------------------------------ coordinates
def _float32_coordinates(case, geom, convention):
    grid = base_grid(geom)
    points = grid.astype(np.float32) + np.asarray(case.offset).astype(np.float32)
    return evaluate(case, convention, offset=points.astype(np.float64) - grid)


def _float32_rounded(case, geom, convention):
    grid = base_grid(geom)
    points = (grid + np.asarray(case.offset, dtype=np.float64)).astype(np.float32)
    return evaluate(case, convention, offset=points.astype(np.float64) - grid)


def centre_shift(geom):
    """The seed's base-grid shift ``(1 - kh//2, 1 - kw//2)`` (zero for 3x3 and 2x2 kernels).

    The seed places the kernel around ``p_0 = 1 + stride*o`` (the centre of a
    3x3 kernel) with taps ``floor(-(k-1)/2) .. (k-1)//2``; relative to
    torchvision's ``o*stride - padding + i`` that is a shift of
    ``1 - ceil((k-1)/2) = 1 - k//2``.
    """
    return 1 - geom.kh // 2, 1 - geom.kw // 2


def _centre_shift(case, geom, convention):
    sy, sx = centre_shift(geom)
    shift = np.tile([sy, sx], geom.offset_groups * geom.taps).reshape(1, -1, 1, 1)
    return evaluate(case, convention, offset=np.asarray(case.offset, dtype=np.float64) + shift)


def _edge_clamp(case, geom, convention):
    # seed: p clamped to the padded frame [-pad, size-1+pad]; at or beyond its last row (and
    # below its first) both corners coincide and both weights are 1, doubling the edge value
    grid = base_grid(geom)
    points = grid + np.asarray(case.offset, dtype=np.float64)
    per = points.reshape(points.shape[0], geom.offset_groups * geom.taps, 2,
                         geom.out_h, geom.out_w)
    factor = np.ones(per.shape[:2] + per.shape[3:])
    for axis, size in ((0, geom.height), (1, geom.width)):
        lo, hi = -geom.padding[axis], size - 1 + geom.padding[axis]
        p = per[:, :, axis]
        factor *= np.where((p < lo) | (p >= hi), 2.0, 1.0)
        per[:, :, axis] = np.clip(p, lo, hi)
    mask = factor if case.mask is None else np.asarray(case.mask, np.float64) * factor
    r = evaluate(case, convention, offset=per.reshape(points.shape) - grid, mask=mask)
    return {"output": r["output"]}


# ------------------------------------------------------------------ border rules (point remaps)
#: A coordinate the torchvision rule samples as exactly 0 (it is <= -1).
ZERO = -2.0


def _remap(case, geom, remap):
    """Offsets that move every sampling point (y, x) to ``remap(y, x, H, W)``."""
    points = sampling_points(geom, case.offset)
    shape = points.shape
    per = points.reshape(shape[0], -1, 2, geom.out_h, geom.out_w)
    y, x = remap(per[:, :, 0], per[:, :, 1], geom.height, geom.width)
    moved = np.stack([y, x], axis=2).reshape(shape)
    return moved - base_grid(geom), bool(np.any(moved != points))


def msra_v1_points(y, x, height, width):
    """The MSRA DCNv1 border rule as a remap onto torchvision's sampler.

    The 2017 MXNet operator samples only if ``0 <= y < H`` and ``0 <= x < W``
    (no partial band below 0), and in ``[H-1, H)`` both corners are row
    ``H-1`` (``h_high = min(ceil(y), H - 1)``), which repeats the edge row;
    the same for x.  Sources: ``msracver/Deformable-ConvNets``
    ``rfcn/operator_cxx/nn/deformable_im2col.cuh`` l.85-87 and 250; MXNet's
    ``contrib.DeformableConvolution``; OpenVINO DeformableConvolution-1 and -8
    with ``bilinear_interpolation_pad=false`` (intel_cpu ``def_conv.cpp``);
    TVM before PR 7397.
    """
    out = (y < 0) | (y >= height) | (x < 0) | (x >= width)
    y = np.where(y > height - 1, height - 1.0, y)
    x = np.where(x > width - 1, width - 1.0, x)
    return np.where(out, ZERO, y), np.where(out, ZERO, x)


def tvm_points(y, x, height, width):
    """TVM's border rule as a remap: a sample with ``y < 0`` or ``x < 0`` is dropped (no band
    below 0), the band ``(H-1, H)`` is partial with zero corners as torchvision's.

    Sources: ``tvm/python/tvm/topi/testing/deformable_conv2d_python.py`` (the
    ``topi.testing`` reference) and ``topi/nn/deformable_conv2d.py`` (the
    compiled op), measured in peers.md (apache-tvm 0.27).
    """
    out = (y < 0) | (x < 0)
    return np.where(out, ZERO, y), np.where(out, ZERO, x)


def clamp_points(y, x, height, width):
    """Edge clamping: every point clamped into the image, ``[0, H-1] x [0, W-1]`` (replicate
    padding, as ``torch.nn.functional.grid_sample(padding_mode="border")``), never zero."""
    return np.clip(y, 0.0, height - 1.0), np.clip(x, 0.0, width - 1.0)


def _border_rule(remap):
    """A variant predicting the value-based quantities of a border rule (the offset gradient
    of a remapped point is not modelled)."""
    def applies(case, geom):
        return case.input.shape[0] > 0 and _remap(case, geom, remap)[1]

    def predict(case, geom, convention):
        offset, _ = _remap(case, geom, remap)
        r = evaluate(case, convention, offset=offset)
        del r["offset"]
        return r
    return applies, predict


# ------------------------------------------------------------------ mask transforms
def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _mask_sigmoid(case, geom, convention):
    s = _sigmoid(np.asarray(case.mask, np.float64))
    r = evaluate(case, convention, mask=s)
    r["mask"] = r["mask"] * s * (1 - s)           # chain rule to the raw mask
    return r


def _mask_varies_over_taps(case, geom):
    """Whether the case can tell a softmax over the taps from a per-value transform: with the
    same mask on every tap the softmax is just 1/K (mmcv_small: 0.5 on 4 taps, 0.5**2 = 1/4)."""
    if case.mask is None or case.input.shape[0] == 0 or geom.taps < 2:
        return False
    m = np.asarray(case.mask).reshape(case.mask.shape[0], geom.offset_groups, geom.taps, -1)
    return bool(np.any(m != m[:, :, :1]))


def _mask_softmax(case, geom, convention):
    m = np.asarray(case.mask, np.float64)
    per = m.reshape(m.shape[0], geom.offset_groups, geom.taps, geom.out_h, geom.out_w)
    e = np.exp(per - per.max(axis=2, keepdims=True))
    s = e / e.sum(axis=2, keepdims=True)
    r = evaluate(case, convention, mask=s.reshape(m.shape))
    g = r["mask"].reshape(per.shape)
    r["mask"] = (s * (g - (s * g).sum(axis=2, keepdims=True))).reshape(m.shape)
    return r


# ------------------------------------------------------------------ dropped terms
def _mask_ignored(case, geom, convention):
    r = evaluate(case, convention, mask=None)
    del r["mask"]
    return r


def _bias_dropped(case, geom, convention):
    r = evaluate(case, convention)
    return {"output": r["output"] - np.asarray(case.bias, np.float64)[None, :, None, None]}


# ------------------------------------------------------------------ i*kh + j
def kh_index_map(geom):
    """Tap read by each tap under the ``i*kh + j`` bug, as flat indices over D*K taps."""
    K = geom.taps
    return np.array([d * K + i * geom.kh + j for d in range(geom.offset_groups)
                     for i in range(geom.kh) for j in range(geom.kw)])


def _kh_index_applies(case, geom):
    return geom.kh != geom.kw and int(kh_index_map(geom).max()) < geom.offset_groups * geom.taps


def _kh_index(case, geom, convention):
    idx = kh_index_map(geom)
    N, DK = case.offset.shape[0], geom.offset_groups * geom.taps
    hw = (geom.out_h, geom.out_w)
    off = np.asarray(case.offset, np.float64).reshape((N, DK, 2) + hw)[:, idx]
    changes = dict(offset=off.reshape(case.offset.shape))
    if case.mask is not None:
        changes["mask"] = np.asarray(case.mask, np.float64)[:, idx]
    r = evaluate(case, convention, **changes)
    g_off = np.zeros((N, DK, 2) + hw)
    np.add.at(g_off, (slice(None), idx), r["offset"].reshape((N, DK, 2) + hw))
    r["offset"] = g_off.reshape(case.offset.shape)
    if r["mask"] is not None:
        g_mask = np.zeros((N, DK) + hw)
        np.add.at(g_mask, (slice(None), idx), r["mask"])
        r["mask"] = g_mask
    return r


VARIANTS = [
    Variant("planar",
            "offsets read as planar (all dy, then all dx), as the seed pytorch-deform-conv-v2",
            "the implementation reads offset channel k as dy and K + k as dx of tap k "
            "(per offset group) instead of the interleaved 2k, 2k + 1",
            "convert planar offsets with refdcn.layouts.planar_to_torchvision (or fix the "
            "kernel's offset index to 2*k and 2*k + 1)",
            lambda c, g: g.taps > 1 and _nonzero(c.offset), _planar),
    Variant("xy_pairs",
            "offset pairs read as (dx, dy) instead of (dy, dx), as DCNv3/DCNv4",
            "channel 2k is taken as the column offset and 2k + 1 as the row offset",
            "swap the pairs with refdcn.layouts.swap_offset_pairs (torchvision is y first)",
            lambda c, g: _nonzero(c.offset), _xy_pairs),
    Variant("dcnv4",
            "DCNv3/DCNv4 offset layout: (dx, dy) pairs and x-major taps (t = j*kh + i)",
            "the implementation expects DCNv3/v4's order; torchvision's is (dy, dx) pairs, "
            "row-major taps k = i*kw + j",
            "convert with refdcn.layouts.dcnv4_to_torchvision / dcnv4_mask_to_torchvision",
            lambda c, g: g.taps > 1 and _nonzero(c.offset), _dcnv4),
    Variant("convention",
            "the other offset-gradient convention",
            "the offset gradient differs only for samples exactly on y = -1 or x = -1",
            "compare with --convention set to the other rule (refdcn supports both: "
            "deform_conv2d_backward(..., convention=...))",
            lambda c, g: True, _convention, gradients_only=True),
    Variant("float32_coordinates",
            "sampling coordinates computed in float32 (float32(y0) + float32(dy))",
            "a float32 coordinate carries an error of about 6e-8 * |y|, far above float64 "
            "rounding",
            "form the sampling point in the input's precision (double for float64)",
            lambda c, g: _nonzero(c.offset), _float32_coordinates, approximate=True),
    Variant("float32_rounded",
            "sampling coordinates rounded to float32 (as ONNX's reference evaluator, which "
            "stores GridSample coordinates in a float32 array)",
            "a float32 coordinate carries an error of about 6e-8 * |y|, far above float64 "
            "rounding",
            "keep sampling coordinates in float64 (or accept a relative tolerance of ~1e-6)",
            lambda c, g: _nonzero(c.offset), _float32_rounded, approximate=True),
    Variant("centre_shift",
            "base grid placed around a 3x3 kernel's centre (seed project, kernels other "
            "than 2x2 and 3x3)",
            "tap (i, j) sits at o*stride - padding + i + (1 - kh//2) instead of "
            "o*stride - padding + i*dilation",
            "tap (0, 0) of output (0, 0) must sample (-padding_h, -padding_w)",
            lambda c, g: centre_shift(g) != (0, 0), _centre_shift),
    Variant("edge_clamp",
            "samples clamped to the padded edge with doubled weights instead of zero outside "
            "(seed project, padding 0)",
            "a sample at or beyond the last row/column (or before the first) returns 2x "
            "the edge value (4x at a corner)",
            "return 0 for y <= -1 or y >= H (x <= -1 or x >= W), and zero only the corners "
            "outside the image",
            lambda c, g: min(g.padding) == 0, _edge_clamp),
    Variant("msra_v1_border",
            "the MSRA DCNv1 border rule (MXNet DCNv1, OpenVINO DeformableConvolution-1 and -8 "
            "with bilinear_interpolation_pad=false, TVM before PR 7397)",
            "zero for y < 0 or x < 0 (no partial band below 0) and the edge row/column "
            "repeated in (H-1, H) / (W-1, W)",
            "sample with a one-pixel zero border: partial corners in (-1, 0) and (H-1, H) "
            "(OpenVINO: bilinear_interpolation_pad=true)",
            *_border_rule(msra_v1_points)),
    Variant("tvm_border",
            "TVM's border rule (topi.testing reference and topi.nn.deformable_conv2d_nchw)",
            "a sample with y < 0 or x < 0 is dropped (no band below 0) while the band "
            "(H-1, H) keeps its partial corners",
            "also sample the band (-1, 0) with its partial corner: 0 only for y <= -1 or x <= -1",
            *_border_rule(tvm_points)),
    Variant("clamp_to_edge",
            "coordinates clamped to the image edge (replicate padding)",
            "points outside the image take the nearest edge value instead of fading to 0",
            "return 0 for y <= -1 or y >= H (x likewise) and zero the corners outside the image",
            *_border_rule(clamp_points)),
    Variant("mask_sigmoid",
            "a sigmoid applied to the mask inside the op (as mmcv's ModulatedDeformConv2dPack "
            "and the seed do before calling it)",
            "the implementation multiplies by sigmoid(mask) instead of the raw mask",
            "use the mask as given; apply the sigmoid in the module that produces it",
            lambda c, g: c.mask is not None and c.input.shape[0] > 0, _mask_sigmoid),
    Variant("mask_softmax",
            "a softmax over the taps applied to the mask inside the op (as DCNv3)",
            "the implementation multiplies by softmax(mask) over the kh*kw taps of each "
            "offset group (InternImage ops_dcnv3 dcnv3.py) instead of the raw mask",
            "use the mask as given (DCNv2 and DCNv4 do); normalise it outside the op",
            _mask_varies_over_taps, _mask_softmax),
    Variant("mask_ignored",
            "the mask (modulation) is ignored",
            "the result equals DCNv1 on the same offsets",
            "multiply each tap's sample by mask[n, d*kh*kw + i*kw + j, oy, ox]",
            lambda c, g: c.mask is not None and bool(np.any(np.asarray(c.mask) != 1)),
            _mask_ignored),
    Variant("kh_index",
            "tap index i*kh + j instead of i*kw + j (non-square kernels)",
            "offset/mask channels are indexed with the kernel height where the width is meant",
            "index taps as k = i*kw + j",
            _kh_index_applies, _kh_index),
    Variant("bias_dropped",
            "the bias is not added",
            "the output is off by exactly bias[o] in every pixel",
            "add bias[o] to every output pixel of channel o",
            lambda c, g: _nonzero(c.bias), _bias_dropped),
]

_BY_KEY = {v.key: v for v in VARIANTS}


def get_variant(key):
    """The :class:`Variant` with ``key``."""
    return _BY_KEY[key]


def geometry_of(case):
    """The :class:`refdcn.geometry.Geometry` of a case."""
    return check_arguments(case.input, case.offset, case.weight, case.bias, case.stride,
                           case.padding, case.dilation, case.mask)
