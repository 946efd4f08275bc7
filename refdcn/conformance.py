"""Named conformance cases: inputs, attributes and what each one catches.

Each :class:`ConformanceCase` builds a float64 :class:`refdcn.testing.Case`
(inputs, attributes and the upstream gradient ``grad_output``); the expected
output and the five gradients under either offset-gradient convention come
from the float64 explicit-loop reference (:func:`expected`), cached per process.

The cases are small on purpose (the loop reference is slow, and the golden
vectors written by ``refdcn vectors export`` should stay readable); each one
targets one way an implementation can be wrong, stated in ``catches``.

>>> from refdcn import conformance
>>> [c.name for c in conformance.CASES][:2]
['onnx_with_padding', 'onnx_without_padding']
>>> conformance.get_case("mmcv_small").small
True
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from . import handworked
from .geometry import output_size
from .handworked import BAND_TARGETS_X, BAND_TARGETS_Y, BORDER_TARGETS, MMCV_INPUT
from .testing import Case, make_case, reference_results

__all__ = ["ConformanceCase", "CASES", "get_case", "expected", "select", "names"]


@dataclass(frozen=True)
class ConformanceCase:
    """A named case: ``build()`` returns its float64 :class:`~refdcn.testing.Case`.

    Attributes
    ----------
    name : str
    catches : str
        One line: the mistake this case exposes.
    build : callable
        ``build() -> Case`` (a fresh copy each call).
    small : bool
        Small: cheap for the loop reference and readable as golden vectors
        (the cases worked out by hand are those of :data:`refdcn.handworked.BY_HAND`).
    onnx : bool
        Whether it is exported in the ONNX backend-test layout by
        ``refdcn vectors export``; False for batch 0.
    onnx_omitted : str
        Why not, when ``onnx`` is False (written to the manifest).
    """
    name: str
    catches: str
    build: Callable[[], Case]
    small: bool = True
    onnx: bool = True
    onnx_omitted: str = ""


# ------------------------------------------------------------------ the ONNX backend cases
def _onnx_base(out_hw, offset_groups=1):
    # channel 0 is arange(9), channel 1 (if any) is arange(9) reversed
    x = np.stack([np.arange(9.0), np.arange(8.0, -1, -1)][:offset_groups]).reshape(
        1, offset_groups, 3, 3)
    w = np.ones((1, offset_groups, 2, 2))
    off = np.zeros((1, 8 * offset_groups) + out_hw)
    return x, w, off


def _onnx_with_padding():
    x, w, off = _onnx_base((4, 4))
    off[0, 0, 0, 0] = 0.5          # dy of tap (0, 0) at output (0, 0)
    off[0, 5, 1, 2] = -0.1         # dx of tap (1, 0) at output (1, 2)
    return Case(x, off, w, None, None, np.ones((1, 1, 4, 4)), padding=(1, 1),
                name="onnx_with_padding")


def _onnx_without_padding():
    x, w, off = _onnx_base((2, 2))
    off[0, 0, 0, 0] = 0.5          # dy of tap (0, 0) at output (0, 0)
    off[0, 5, 0, 1] = -0.1         # dx of tap (1, 0) at output (0, 1)
    return Case(x, off, w, None, None, np.ones((1, 1, 2, 2)), name="onnx_without_padding")


def _onnx_mask_bias():
    case = _onnx_without_padding()
    mask = np.ones((1, 4, 2, 2))
    mask[0, 2, 1, 1] = 0.2         # tap (1, 0) at output (1, 1)
    case.bias, case.mask, case.name = np.ones(1), mask, "onnx_mask_bias"
    return case


def _onnx_offset_groups():
    x, w, off = _onnx_base((2, 2), offset_groups=2)
    off[0, 0, 0, 0] = 0.5          # group 0: dy of tap (0, 0) at (0, 0)
    off[0, 13, 0, 1] = -0.1        # group 1: dx of tap (1, 0) at (0, 1)
    return Case(x, off, w, None, None, np.ones((1, 1, 2, 2)), name="onnx_offset_groups")


# ------------------------------------------------------------------ torchvision and mmcv
def _torchvision_awkward(batch):
    """torchvision's own test configuration (test/test_ops.py, TestDeformConv)."""
    def build():
        return make_case(seed=7, batch=batch, in_channels=6, out_channels=2, height=5, width=4,
                         kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2,
                         offset_groups=3, name=f"torchvision_awkward_batch{batch}")
    return build


def _mmcv_small():
    # ModulatedDeformConv2dPack(1, 1, kernel_size=(2, 2), padding=1, bias=False), weight 1,
    # zero-initialised offset conv (offsets 0, mask sigmoid(0) = 0.5), loss = output.sum()
    x = np.array([[MMCV_INPUT]])
    w = np.ones((1, 1, 2, 2))
    off = np.zeros((1, 8, 4, 4))
    mask = np.full((1, 4, 4, 4), 0.5)
    return Case(x, off, w, None, mask, np.ones((1, 1, 4, 4)), padding=(1, 1), name="mmcv_small")


# ------------------------------------------------------------------ borders, by construction
def _border_exact_y():
    # 1x1 kernel, no padding: output (oy, ox) samples (T[ox], ox + oy/4)
    x = handworked.PLANE[None, None].copy()                # v[y, x] = 4y + x + 1
    oy, ox = np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij")
    off = np.zeros((1, 2, 3, 4))
    off[0, 0] = np.array(BORDER_TARGETS)[None, :] - oy
    off[0, 1] = oy / 4
    return Case(x, off, np.full((1, 1, 1, 1), 2.0), None, None, np.ones((1, 1, 3, 4)),
                name="border_exact_y")


def _border_exact_x():
    # the transpose of border_exact_y: output (oy, ox) samples (oy + ox/4, T[oy])
    c = _border_exact_y()
    x = np.ascontiguousarray(c.input.transpose(0, 1, 3, 2))
    off = np.ascontiguousarray(c.offset[:, ::-1].transpose(0, 1, 3, 2))
    return Case(x, off, c.weight, None, None, np.ones((1, 1, 4, 3)), name="border_exact_x")


def _border_bands():
    # 1x1 kernel on a 3x3 image: output (oy, ox) samples (BAND_TARGETS_Y[oy], BAND_TARGETS_X[ox])
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)          # v[y, x] = 3y + x + 1
    oy, ox = np.meshgrid(np.arange(3.0), np.arange(3.0), indexing="ij")
    off = np.zeros((1, 2, 3, 3))
    off[0, 0] = np.array(BAND_TARGETS_Y)[:, None] - oy
    off[0, 1] = np.array(BAND_TARGETS_X)[None, :] - ox
    mask = np.full((1, 1, 3, 3), 0.5)
    return Case(x, off, np.full((1, 1, 1, 1), 2.0), None, mask, np.ones((1, 1, 3, 3)),
                name="border_bands")


# ------------------------------------------------------------------ generated cases
def _made(name, **kw):
    base = dict(seed=0, batch=2, in_channels=2, out_channels=2, height=4, width=5, kernel=3,
                padding=1, groups=1, offset_groups=1)
    base.update(kw)

    def build():
        return make_case(name=name, **base)
    return build


def _huge_offsets():
    case = _made("huge_offsets", seed=31, batch=1, offset_groups=2)()
    rng = np.random.default_rng(31)
    far = rng.uniform(size=case.offset.shape) < 0.5
    case.offset = np.where(far, rng.choice([-100.0, 100.0], size=case.offset.shape), case.offset)
    return case


def _mask_outside_unit():
    case = _made("mask_outside_unit", seed=41, offsets="gridsafe")()
    case.mask = np.random.default_rng(41).uniform(-2.0, 3.0, size=case.mask.shape)
    return case


def _random_sweep(seed):
    def build():
        rng = np.random.default_rng(seed)
        groups, og = [(1, 2), (2, 3), (3, 1), (2, 2)][seed % 4]
        kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        dilation = (1, int(rng.integers(1, 3)))
        h, w = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        while min(output_size(h, w, kernel, stride, padding, dilation)) < 1:
            h, w = h + 1, w + 1
        return make_case(seed=seed, batch=int(rng.integers(1, 4)),
                         in_channels=groups * og * int(rng.integers(1, 3)),
                         out_channels=groups * int(rng.integers(1, 3)), height=h, width=w,
                         kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, offset_groups=og, modulated=bool(seed % 2),
                         bias=seed % 3 != 2, name=f"random_{seed}")
    return build


RANDOM_SEEDS = range(6)

CASES = [
    ConformanceCase("onnx_with_padding",
                    "ONNX backend case: border taps in the zero band with padding 1",
                    _onnx_with_padding),
    ConformanceCase("onnx_without_padding",
                    "ONNX backend case: the (dy, dx) channel order of one fractional offset",
                    _onnx_without_padding),
    ConformanceCase("onnx_mask_bias",
                    "ONNX backend case: the mask multiplies one tap, the bias is added",
                    _onnx_mask_bias),
    ConformanceCase("onnx_offset_groups",
                    "ONNX backend case: channel 1 reads offset group 1 (offset channel 13)",
                    _onnx_offset_groups),
    ConformanceCase("torchvision_awkward_batch0",
                    "batch 0: an empty batch returns an empty output and empty gradients",
                    _torchvision_awkward(0), small=False, onnx=False,
                    onnx_omitted="an empty batch (N = 0): zero-sized tensors are not portable "
                                 "across ONNX consumers, so only cases/"
                                 "torchvision_awkward_batch0.npz holds this case"),
    ConformanceCase("torchvision_awkward_batch1",
                    "kernel (3,2), stride (2,1), padding (1,0), dilation (2,1), groups 2, "
                    "offset groups 3: every index map at once",
                    _torchvision_awkward(1), small=False),
    ConformanceCase("torchvision_awkward_batch37",
                    "prime batch 37 > 32: batch blocking (im2col_step, n_parallel_imgs) "
                    "must not change results",
                    _torchvision_awkward(37), small=False),
    ConformanceCase("mmcv_small",
                    "mmcv's golden case: zero offsets + padding 1 land exactly on -1 "
                    "(the two gradient conventions differ here)",
                    _mmcv_small),
    ConformanceCase("border_exact_y",
                    "samples exactly on y = -1, 0, H-1 and H: the closed/open ends of the "
                    "zero band and the one-sided offset gradient",
                    _border_exact_y),
    ConformanceCase("border_exact_x",
                    "samples exactly on x = -1, 0, W-1 and W (the transpose of border_exact_y)",
                    _border_exact_x),
    ConformanceCase("border_bands",
                    "samples in the bands (-1, 0) and (H-1, H) on both axes: partial corners "
                    "are zero, not clamped or renormalised",
                    _border_bands),
    ConformanceCase("integer_offsets",
                    "integer offsets: every sample on grid lines, many exactly on -1 and H",
                    _made("integer_offsets", seed=11, in_channels=4, out_channels=4, groups=2,
                          offset_groups=2, offsets="integer", offset_scale=2), small=False),
    ConformanceCase("zero_offsets_conv2d",
                    "zero offsets, no mask: must equal an ordinary convolution with zero "
                    "padding",
                    _made("zero_offsets_conv2d", seed=12, offsets="zero", modulated=False),
                    small=False),
    ConformanceCase("height_one",
                    "H = 1: every row is both the first and the last (crashes ONNX's "
                    "reference evaluator)",
                    _made("height_one", seed=21, height=1, width=5, offset_scale=0.7),
                    small=False),
    ConformanceCase("width_one",
                    "W = 1: every column is both the first and the last",
                    _made("width_one", seed=22, height=5, width=1, offset_scale=0.7),
                    small=False),
    ConformanceCase("huge_offsets",
                    "offsets of +-100: far-outside samples give exactly 0 and zero gradient "
                    "(no clamping, no wrap-around)",
                    _huge_offsets, small=False),
    ConformanceCase("mask_outside_unit",
                    "mask values in [-2, 3]: the mask is used raw (no clamp, no sigmoid)",
                    _mask_outside_unit, small=False),
    ConformanceCase("kernel_1x1",
                    "1x1 kernel without padding: the base grid is the output pixel itself "
                    "(no kernel-centre shift)",
                    _made("kernel_1x1", seed=51, kernel=1, padding=0, in_channels=3,
                          out_channels=2), small=False),
    ConformanceCase("kernel_2x2",
                    "even kernel 2x2, padding 1: tap (0, 0) sits at -padding, not at a centre",
                    _made("kernel_2x2", seed=52, kernel=2, padding=1), small=False),
    ConformanceCase("kernel_4x4",
                    "even kernel 4x4, padding 2, no mask: kernel-centre conventions shift "
                    "the grid",
                    _made("kernel_4x4", seed=53, kernel=4, padding=2, height=5, width=5,
                          batch=1, modulated=False), small=False),
    ConformanceCase("kernel_2x3",
                    "non-square kernel (kh < kw): the tap index is i*kw + j, not i*kh + j",
                    _made("kernel_2x3", seed=54, kernel=(2, 3), padding=(0, 1), in_channels=4,
                          offset_groups=2), small=False),
    ConformanceCase("kernel_3x1",
                    "non-square kernel (kh > kw) without column padding",
                    _made("kernel_3x1", seed=55, kernel=(3, 1), padding=(1, 0)), small=False),
    ConformanceCase("stride2_dilation2",
                    "stride 2 and dilation 2 on both axes, padding 2",
                    _made("stride2_dilation2", seed=61, stride=2, dilation=2, padding=2,
                          height=6, width=7), small=False),
    ConformanceCase("stride_dilation_mixed",
                    "stride (1, 3) with dilation (3, 1): the axes are not swapped",
                    _made("stride_dilation_mixed", seed=62, stride=(1, 3), dilation=(3, 1),
                          padding=(3, 1), height=5, width=8), small=False),
    ConformanceCase("groups3_offset_groups2",
                    "groups 3 x offset groups 2 with 6 channels per offset group: group "
                    "boundaries that do not line up",
                    _made("groups3_offset_groups2", seed=71, batch=1, in_channels=12,
                          out_channels=6, groups=3, offset_groups=2, height=4, width=4),
                    small=False),
    ConformanceCase("depthwise",
                    "depthwise (groups = C_in = 4), offset groups 2, channel multiplier 2",
                    _made("depthwise", seed=72, in_channels=4, out_channels=8, groups=4,
                          offset_groups=2), small=False),
] + [ConformanceCase(f"random_{s}", "seeded random sweep: general agreement",
                     _random_sweep(s), small=False) for s in RANDOM_SEEDS]

_BY_NAME = {c.name: c for c in CASES}


def names():
    """Names of all cases, in order."""
    return [c.name for c in CASES]


def get_case(name):
    """The :class:`ConformanceCase` called ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no conformance case {name!r}; known: {sorted(_BY_NAME)}") from None


def select(pattern=None):
    """Cases whose name contains ``pattern`` (all cases if None).

    ``pattern`` may also be a list of substrings: a case is selected if its
    name contains any of them.
    """
    if pattern is None:
        return list(CASES)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [c for c in CASES if any(p in c.name for p in patterns)]


@lru_cache(maxsize=None)
def _expected(name, convention):
    return reference_results(get_case(name).build(), convention)


def expected(name, convention="torchvision"):
    """Float64 expected ``{output, input, offset, mask, weight, bias}`` of a case.

    Computed once per process by the explicit-loop reference; the arrays are
    shared between calls, so copy before modifying them.
    """
    return dict(_expected(name, convention))
