"""Named conformance cases of DCNv3 and DCNv4: inputs, attributes and what each one catches.

The same cases serve both operators (they compute the same function): a
:class:`ModernCase` holds DCNv3's separate ``offset`` and ``mask``, and
:meth:`ModernCase.packed` gives DCNv4's ``offset_mask``, whose padding channels
(``3*G*K .. ceil(3*G*K/8)*8``) hold arbitrary non-zero values that a correct
implementation never reads.  Expected values come from the float64
explicit-loop reference (:func:`expected`, cached per process).

>>> from refdcn import conformance_dcnv34 as c
>>> c.get_case("border_exact_y").build().attrs["kernel_h"]
1
"""

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable

import numpy as np

from .dcnv34 import api
from .dcnv34.geometry import packed_channels
from .geometry import output_size
from .handworked import BAND_TARGETS_X, BAND_TARGETS_Y, BORDER_TARGETS

__all__ = ["ModernCase", "ConformanceCase", "CASES", "make_case", "get_case", "select", "names",
           "expected", "OPS"]

#: The operators the cases are run as.
OPS = ("dcnv3", "dcnv4")

ATTRIBUTES = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h",
              "dilation_w", "group", "group_channels", "offset_scale", "remove_center")


@dataclass
class ModernCase:
    """Inputs and attributes of one DCNv3/DCNv4 call.

    ``input`` (N, H, W, G*D); ``offset`` (N, H_out, W_out, G*K*2); ``mask``
    (N, H_out, W_out, G*K); ``grad_output`` (N, H_out, W_out, G*D); ``attrs``
    the 12 attributes of :data:`ATTRIBUTES`; ``padding_values`` the values of
    DCNv4's padding channels (shape (N, H_out, W_out, C_pad - 3*G*K)).
    ``meta["input_view"] == "nchw_transposed"`` asks adapters to hand the input
    over as a transposed NCHW array (channels-last strides, not contiguous).
    """
    input: np.ndarray
    offset: np.ndarray
    mask: np.ndarray
    grad_output: np.ndarray
    attrs: dict
    padding_values: np.ndarray = None
    name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def taps(self):
        return self.attrs["kernel_h"] * self.attrs["kernel_w"] - int(self.attrs["remove_center"])

    def packed(self):
        """DCNv4's ``offset_mask`` (N, H_out, W_out, ceil(3*G*K/8)*8), padding filled."""
        g, k = self.attrs["group"], self.taps
        n, ho, wo = self.offset.shape[:3]
        width = packed_channels(g, k)
        out = np.empty((n, ho, wo, width), self.offset.dtype)
        per = np.concatenate([self.offset.reshape(n, ho, wo, g, 2 * k),
                              self.mask.reshape(n, ho, wo, g, k)], axis=-1)
        out[..., :3 * g * k] = per.reshape(n, ho, wo, 3 * g * k)
        if width > 3 * g * k:
            out[..., 3 * g * k:] = self.padding_values
        return out

    def input_for_call(self):
        """The input as adapters hand it over (a transposed NCHW view if the case asks)."""
        if self.meta.get("input_view") == "nchw_transposed":
            return np.ascontiguousarray(self.input.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
        return self.input

    def astype(self, dtype):
        conv = lambda a: None if a is None else np.asarray(a).astype(dtype)
        with np.errstate(over="ignore"):
            return replace(self, input=conv(self.input), offset=conv(self.offset),
                           mask=conv(self.mask), grad_output=conv(self.grad_output),
                           padding_values=conv(self.padding_values))

    def describe(self):
        a = self.attrs
        n, h, w, c = self.input.shape
        return (f"N={n} {h}x{w} G={a['group']} D={a['group_channels']} "
                f"k=({a['kernel_h']},{a['kernel_w']}) s=({a['stride_h']},{a['stride_w']}) "
                f"p=({a['pad_h']},{a['pad_w']}) d=({a['dilation_h']},{a['dilation_w']}) "
                f"offset_scale={a['offset_scale']} remove_center={bool(a['remove_center'])}")


def make_case(seed=0, batch=2, height=5, width=6, group=2, group_channels=2, kernel=(3, 3),
              stride=(1, 1), pad=(1, 1), dilation=(1, 1), offset_scale=1.0, remove_center=False,
              offsets="random", masks="random", name="", dtype=np.float64):
    """A seeded random :class:`ModernCase`.

    ``offsets``: ``"random"`` (N(0, 1)), ``"zero"``, ``"integer"`` (in -2..2:
    samples on grid lines, many exactly on -1 or H) or ``"gridsafe"`` (fractions
    in [0.1, 0.9]: no sample within 0.1 of a grid line, for finite differences).
    ``masks``: ``"random"`` (N(0, 1): not a softmax), ``"softmax"`` (a softmax
    over the K taps, as DCNv3's module passes).
    """
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    k = kh * kw - int(remove_center)
    ho, wo = output_size(height, width, kernel, stride, pad, dilation)
    c = group * group_channels
    shape = (batch, ho, wo, group * k * 2)
    if offsets == "random":
        off = rng.normal(size=shape)
    elif offsets == "zero":
        off = np.zeros(shape)
    elif offsets == "integer":
        off = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif offsets == "gridsafe":
        # with offset_scale s the sample's fraction is that of s*offset (+ an integer when
        # s*tap*dilation is one): keep s*offset's fraction away from 0 and 1
        frac = rng.uniform(0.1, 0.9, size=shape) + rng.integers(-1, 2, size=shape)
        off = frac / offset_scale
    else:
        raise ValueError(f"offsets must be random, zero, integer or gridsafe; got {offsets!r}")
    mask = rng.normal(size=(batch, ho, wo, group * k))
    if masks == "softmax":
        mask = api.tap_softmax(mask.reshape(batch, ho, wo, group, k)).reshape(mask.shape)
    width_packed = packed_channels(group, k)
    case = ModernCase(
        input=rng.normal(size=(batch, height, width, c)), offset=off, mask=mask,
        grad_output=rng.normal(size=(batch, ho, wo, c)),
        attrs=dict(kernel_h=kh, kernel_w=kw, stride_h=stride[0], stride_w=stride[1],
                   pad_h=pad[0], pad_w=pad[1], dilation_h=dilation[0], dilation_w=dilation[1],
                   group=group, group_channels=group_channels,
                   offset_scale=float(offset_scale), remove_center=bool(remove_center)),
        padding_values=rng.uniform(-5, 5, size=(batch, ho, wo, width_packed - 3 * group * k)),
        name=name)
    return case.astype(dtype)


@dataclass(frozen=True)
class ConformanceCase:
    """A named case: ``build()`` returns a fresh float64 :class:`ModernCase`."""
    name: str
    catches: str
    build: Callable[[], ModernCase]


# ------------------------------------------------------------------ borders, by construction


def _border_exact_y():
    # 1x1 kernel, two groups of two channels; output (oy, ox) of group g samples
    # (T[ox], ox + (oy + g)/4) with T = handworked.BORDER_TARGETS (-1, 0, H-1, H for H = 3)
    case = make_case(seed=81, batch=1, height=3, width=4, group=2, group_channels=2, kernel=(1, 1),
                     pad=(0, 0), name="border_exact_y")
    oy, ox = np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij")
    off = case.offset.reshape(1, 3, 4, 2, 1, 2)
    for g in range(2):
        off[0, :, :, g, 0, 1] = np.array(BORDER_TARGETS)[None, :] - oy
        off[0, :, :, g, 0, 0] = (oy + g) / 4
    case.offset = off.reshape(case.offset.shape)
    return case


def _border_exact_x():
    case = _border_exact_y()
    n, ho, wo = case.offset.shape[:3]
    off = case.offset.reshape(n, ho, wo, 2, 1, 2)[..., ::-1]          # swap dx and dy
    case.input = np.ascontiguousarray(case.input.transpose(0, 2, 1, 3))
    case.offset = np.ascontiguousarray(off.transpose(0, 2, 1, 3, 4, 5)).reshape(n, wo, ho, 4)
    case.mask = np.ascontiguousarray(case.mask.transpose(0, 2, 1, 3))
    case.grad_output = np.ascontiguousarray(case.grad_output.transpose(0, 2, 1, 3))
    case.padding_values = np.ascontiguousarray(case.padding_values.transpose(0, 2, 1, 3))
    case.name = "border_exact_x"
    return case


def _border_bands():
    case = make_case(seed=82, batch=1, height=3, width=3, group=1, group_channels=3,
                     kernel=(1, 1), pad=(0, 0), name="border_bands")
    oy, ox = np.meshgrid(np.arange(3.0), np.arange(3.0), indexing="ij")
    off = case.offset.reshape(1, 3, 3, 1, 1, 2)
    off[0, :, :, 0, 0, 1] = np.array(BAND_TARGETS_Y)[:, None] - oy
    off[0, :, :, 0, 0, 0] = np.array(BAND_TARGETS_X)[None, :] - ox
    return case


def _made(name, **kw):
    def build():
        return make_case(name=name, **kw)
    return build


def _huge_offsets():
    case = make_case(seed=91, batch=1, height=4, width=5, group=2, kernel=(3, 3),
                     name="huge_offsets")
    rng = np.random.default_rng(91)
    far = rng.uniform(size=case.offset.shape) < 0.5
    case.offset = np.where(far, rng.choice([-100.0, 100.0], size=case.offset.shape), case.offset)
    return case


def _mask_not_softmax():
    case = make_case(seed=92, batch=1, height=4, width=4, group=2, offsets="gridsafe",
                     name="mask_not_softmax")
    case.mask = np.random.default_rng(92).uniform(-2.0, 3.0, size=case.mask.shape)
    return case


def _channels_last_view():
    case = make_case(seed=95, batch=2, height=4, width=5, group=2, group_channels=3,
                     name="channels_last_view")
    case.meta["input_view"] = "nchw_transposed"
    return case


def _random(seed):
    def build():
        rng = np.random.default_rng(seed)
        kernel = [(3, 3), (2, 3), (3, 1), (5, 5)][seed % 4]
        rc = kernel[0] == kernel[1] and kernel[0] % 2 == 1 and bool(seed % 2)
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        dilation = (int(rng.integers(1, 3)), 1)
        pad = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        h, w = int(rng.integers(4, 8)), int(rng.integers(4, 8))
        while min(output_size(h, w, kernel, stride, pad, dilation)) < 1:
            h, w = h + 1, w + 1
        return make_case(seed=100 + seed, batch=int(rng.integers(1, 3)), height=h, width=w,
                         group=int(rng.integers(1, 4)), group_channels=int(rng.integers(1, 4)),
                         kernel=kernel, stride=stride, pad=pad, dilation=dilation,
                         offset_scale=float(rng.choice([1.0, 0.5, 1.5])), remove_center=rc,
                         name=f"random_{seed}")
    return build


CASES = [
    ConformanceCase("border_exact_y",
                    "samples exactly on y = -1, 0, H-1 and H: the zero band's ends and the "
                    "offset gradient at -1 (0 in DCNv3/v4)", _border_exact_y),
    ConformanceCase("border_exact_x",
                    "samples exactly on x = -1, 0, W-1 and W (the transpose of border_exact_y): "
                    "(dx, dy) order and the x border", _border_exact_x),
    ConformanceCase("border_bands",
                    "samples in the bands (-1, 0) and (H-1, H): partial corners are zero, not "
                    "clamped", _border_bands),
    ConformanceCase("zero_offsets_pad1",
                    "zero offsets, 3x3, pad 1: every border tap lands exactly on -1 (the first "
                    "training step); softmax weights",
                    _made("zero_offsets_pad1", seed=83, batch=1, height=4, width=4, group=2,
                          offsets="zero", masks="softmax")),
    ConformanceCase("integer_offsets",
                    "integer offsets: samples on grid lines, many exactly on -1 and H",
                    _made("integer_offsets", seed=84, batch=1, height=4, width=5, group=2,
                          offsets="integer")),
    ConformanceCase("offset_scale_2",
                    "offset_scale 2: taps and offsets scaled about the kernel centre "
                    "(not the offsets alone)",
                    _made("offset_scale_2", seed=85, batch=1, height=6, width=6, group=2,
                          offset_scale=2.0, pad=(2, 2))),
    ConformanceCase("offset_scale_even_kernel",
                    "offset_scale 0.5 with an even 2x4 kernel: the centre is "
                    "(dilation*(k-1))//2, rounded down",
                    _made("offset_scale_even_kernel", seed=86, batch=1, height=5, width=7,
                          group=1, group_channels=3, kernel=(2, 4), pad=(0, 1),
                          offset_scale=0.5)),
    ConformanceCase("remove_center_3x3",
                    "remove_center: K = 8, the centre tap is skipped in both layouts",
                    _made("remove_center_3x3", seed=87, batch=1, height=4, width=5, group=2,
                          remove_center=True)),
    ConformanceCase("remove_center_5x5_dilated",
                    "remove_center with a dilated 5x5 kernel: K = 24, centre index 12",
                    _made("remove_center_5x5_dilated", seed=88, batch=1, height=7, width=7,
                          group=1, kernel=(5, 5), dilation=(2, 1), pad=(4, 2),
                          remove_center=True)),
    ConformanceCase("packed_padding",
                    "DCNv4: 3*G*K = 27 packed in 32 channels; the 5 padding channels hold "
                    "non-zero values that must be ignored",
                    _made("packed_padding", seed=89, batch=2, height=4, width=4, group=1,
                          group_channels=4)),
    ConformanceCase("groups_nonsquare",
                    "G = 3 groups, kernel (2, 3), stride (2, 1), pad (1, 0), dilation (1, 2): "
                    "every index map at once (x-major taps, per-group blocks)",
                    _made("groups_nonsquare", seed=90, batch=2, height=5, width=7, group=3,
                          group_channels=2, kernel=(2, 3), stride=(2, 1), pad=(1, 0),
                          dilation=(1, 2))),
    ConformanceCase("channels_last_view",
                    "the input is a transposed NCHW array (channels-last strides, not "
                    "contiguous)", _channels_last_view),
    ConformanceCase("mask_not_softmax",
                    "weights in [-2, 3] that do not sum to 1: the op applies no softmax",
                    _mask_not_softmax),
    ConformanceCase("huge_offsets",
                    "offsets of +-100: far-outside samples give exactly 0 and zero gradient",
                    _huge_offsets),
    ConformanceCase("height_one",
                    "H = 1: the only row is first and last",
                    _made("height_one", seed=93, batch=1, height=1, width=5, group=2,
                          kernel=(1, 3), pad=(0, 1), offset_scale=0.7)),
    ConformanceCase("width_one",
                    "W = 1: the only column is first and last",
                    _made("width_one", seed=94, batch=1, height=5, width=1, group=2,
                          kernel=(3, 1), pad=(1, 0), offset_scale=0.7)),
] + [ConformanceCase(f"random_{s}", "seeded random sweep: general agreement", _random(s))
     for s in range(4)]

_BY_NAME = {c.name: c for c in CASES}


def names():
    """Names of all cases, in order."""
    return [c.name for c in CASES]


def get_case(name):
    """The :class:`ConformanceCase` called ``name`` (KeyError listing the known names)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no DCNv3/DCNv4 conformance case {name!r}; known: "
                       f"{sorted(_BY_NAME)}") from None


def select(pattern=None):
    """Cases whose name contains ``pattern`` (or any of a list of substrings); all if None."""
    if pattern is None:
        return list(CASES)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [c for c in CASES if any(p in c.name for p in patterns)]


def reference_results(case, op="dcnv3", convention="mmcv", backend="reference"):
    """Float64 output and gradients of ``case`` run as ``op``.

    Returns ``{"output", "input", "offset", "mask"}`` for dcnv3 and
    ``{"output", "input", "offset_mask"}`` for dcnv4.
    """
    c = case.astype(np.float64)
    if op == "dcnv3":
        out = api.dcnv3(c.input, c.offset, c.mask, **c.attrs, backend=backend)
        g = api.dcnv3_backward(c.grad_output, c.input, c.offset, c.mask, **c.attrs,
                               backend=backend, convention=convention)
    elif op == "dcnv4":
        out = api.dcnv4(c.input, c.packed(), **c.attrs, backend=backend)
        g = api.dcnv4_backward(c.grad_output, c.input, c.packed(), **c.attrs, backend=backend,
                               convention=convention)
    else:
        raise ValueError(f"op must be one of {OPS}; got {op!r}")
    return {"output": out, **g._asdict()}


@lru_cache(maxsize=None)
def _expected(name, op, convention, dtype):
    case = get_case(name).build().astype(np.dtype(dtype))
    return reference_results(case, op, convention)


def expected(name, op="dcnv3", convention="mmcv", dtype="float64"):
    """Expected results of case ``name`` for inputs rounded to ``dtype`` (float64 reference,
    cached: copy before modifying)."""
    return dict(_expected(name, op, convention, np.dtype(dtype).name))
