"""Shapes, channel layouts and argument checking of DCNv3 and DCNv4.

Layouts (InternImage ``ops_dcnv3``, OpenGVLab/DCNv4; everything channels-last)
------------------------------------------------------------------------------
``input``       (N, H, W, G*D): ``group`` G groups of ``group_channels`` D channels
``offset``      (N, H_out, W_out, G*K*2) (DCNv3): channel ``g*2K + 2*t + b``,
                ``b = 0`` the column offset dx, ``b = 1`` the row offset dy
``mask``        (N, H_out, W_out, G*K) (DCNv3): channel ``g*K + t``, used as given
                (the DCNv3 *module* applies a softmax over the K taps before the op)
``offset_mask`` (N, H_out, W_out, C_pad) (DCNv4), ``C_pad >= 3*G*K`` (DCNv4's module
                uses ``ceil(3*G*K / 8) * 8``): per group ``g`` at channel ``g*3K``,
                first the 2K offsets as above, then the K modulation weights
                (raw); channels ``3*G*K .. C_pad`` are padding and are ignored
``output``      (N, H_out, W_out, G*D)

Taps are numbered **x-major**: tap ``t`` runs over the kernel columns in the
outer loop and the rows in the inner loop (``t = j*kh + i`` for kernel row ``i``
and column ``j``), skipping the centre tap when ``remove_center`` is set, so
``K = kh*kw - remove_center``.

Sampling point of tap (i, j) of output pixel (oy, ox) in group g
(:func:`refdcn.bilinear.scaled_sampling_point`)::

    y = oy*stride_h - pad_h + ch + (i*dilation_h - ch + dy) * offset_scale
    x = ox*stride_w - pad_w + cw + (j*dilation_w - cw + dx) * offset_scale

with ``ch = (dilation_h*(kernel_h-1)) // 2`` (``cw`` likewise): with
``offset_scale = 1`` exactly torchvision's ``oy*sh - ph + i*dh + dy``.
"""

from dataclasses import dataclass
import math
import numbers

import numpy as np

from ..geometry import MAX_ATTRIBUTE, check_dtype, compute_dtype, output_size

__all__ = ["ModernGeometry", "check_dcnv3", "check_dcnv4", "check_grad_output", "packed_channels",
           "tap_order", "compute_dtype"]


def packed_channels(group, taps):
    """DCNv4's packed channel count ``ceil(3*group*taps / 8) * 8`` (its module's Linear width)."""
    return -(-3 * group * taps // 8) * 8


def tap_order(kernel_h, kernel_w, remove_center):
    """The kernel taps ``(i, j)`` (row, column) in DCNv3/v4 order: x-major, centre optional.

    >>> tap_order(2, 3, False)
    [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    >>> len(tap_order(3, 3, True))
    8
    """
    return [(i, j) for j in range(kernel_w) for i in range(kernel_h)
            if not (remove_center and i == kernel_h // 2 and j == kernel_w // 2)]


@dataclass(frozen=True)
class ModernGeometry:
    """Everything the DCNv3/DCNv4 kernels need to know about one call.

    Attributes use InternImage's names: ``group`` (G), ``group_channels`` (D),
    ``kernel_h``, ``kernel_w``, ``stride_h`` ... ``offset_scale``,
    ``remove_center``.  ``taps`` is K; ``tap_rows`` / ``tap_cols`` give the
    kernel row ``i`` and column ``j`` of each tap in x-major order;
    ``centre_h = (dilation_h*(kernel_h-1)) // 2`` (``centre_w`` likewise) is the
    point ``offset_scale`` scales about.
    """
    batch: int
    height: int
    width: int
    group: int
    group_channels: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    offset_scale: float
    remove_center: bool
    out_h: int
    out_w: int

    @property
    def channels(self):
        return self.group * self.group_channels

    @property
    def out_pixels(self):
        return self.out_h * self.out_w

    @property
    def taps(self):
        return self.kernel_h * self.kernel_w - int(self.remove_center)

    @property
    def centre_h(self):
        return (self.dilation_h * (self.kernel_h - 1)) // 2

    @property
    def centre_w(self):
        return (self.dilation_w * (self.kernel_w - 1)) // 2

    def tap_list(self):
        """``[(i, j), ...]`` of the K taps in order (:func:`tap_order`)."""
        return tap_order(self.kernel_h, self.kernel_w, self.remove_center)

    @property
    def tap_rows(self):
        return np.array([i for i, _ in self.tap_list()], dtype=np.int64)

    @property
    def tap_cols(self):
        return np.array([j for _, j in self.tap_list()], dtype=np.int64)

    def ints(self):
        """The integers of the compiled kernels, as one int64 array:
        ``(H, W, G, D, sh, sw, ph, pw, dh, dw, H_out, W_out, ch, cw)``."""
        return np.array([self.height, self.width, self.group, self.group_channels,
                         self.stride_h, self.stride_w, self.pad_h, self.pad_w,
                         self.dilation_h, self.dilation_w, self.out_h, self.out_w,
                         self.centre_h, self.centre_w], dtype=np.int64)

    def with_batch(self, batch):
        return ModernGeometry(batch, *[getattr(self, f) for f in _FIELDS[1:]])

    def attributes(self):
        """The attributes as a dict of InternImage's argument names (JSON-able)."""
        return {f: getattr(self, f) for f in _FIELDS[3:15]}


_FIELDS = tuple(ModernGeometry.__dataclass_fields__)


# ------------------------------------------------------------------ checks
def _int(value, name, minimum):
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if value < minimum:
        kind = "non-negative" if minimum == 0 else f">= {minimum}"
        raise ValueError(f"{name} must be {kind}; got {value!r}")
    if value > MAX_ATTRIBUTE:
        raise ValueError(f"{name} must be at most {MAX_ATTRIBUTE} (2**31 - 1); got {value!r}")
    return int(value)


def _array(a, name, layout):
    if a is None or not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{name} must be an array of shape {layout}; got "
                        f"{'None' if a is None else type(a).__name__}")
    check_dtype(a, name)            # refdcn's one dtype policy (float16/32/64)
    if len(a.shape) != 4:
        raise ValueError(f"{name} must be 4-D {layout}; got shape {tuple(a.shape)}")
    return tuple(int(s) for s in a.shape)


def _common(input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
            dilation_w, group, group_channels, offset_scale, remove_center):
    n, h, w, c = _array(input, "input", "(N, H, W, group*group_channels)")
    kh, kw = _int(kernel_h, "kernel_h", 1), _int(kernel_w, "kernel_w", 1)
    sh, sw = _int(stride_h, "stride_h", 1), _int(stride_w, "stride_w", 1)
    ph, pw = _int(pad_h, "pad_h", 0), _int(pad_w, "pad_w", 0)
    dh, dw = _int(dilation_h, "dilation_h", 1), _int(dilation_w, "dilation_w", 1)
    g = _int(group, "group", 1)
    if group_channels is None:
        if c % g:
            raise ValueError(f"input channels {c} (input shape {(n, h, w, c)}) must be a "
                             f"multiple of group={g}")
        group_channels = c // g
    d = _int(group_channels, "group_channels", 1)
    if g * d != c:
        raise ValueError(f"input.shape[3] must be group*group_channels = {g}*{d} = {g * d}; "
                         f"got input shape {(n, h, w, c)}")
    if not isinstance(offset_scale, (numbers.Real, np.floating, np.integer)) or \
            isinstance(offset_scale, bool) or not math.isfinite(float(offset_scale)):
        raise ValueError(f"offset_scale must be a finite real number; got {offset_scale!r}")
    if not isinstance(remove_center, (bool, np.bool_, numbers.Integral)) or \
            int(remove_center) not in (0, 1):
        raise TypeError(f"remove_center must be a bool (or 0/1); got {remove_center!r}")
    rc = bool(remove_center)
    if rc and (kh != kw or kh % 2 == 0):
        raise ValueError(f"remove_center is only defined for odd square kernels (as in "
                         f"InternImage's DCNv3); got kernel_h={kh}, kernel_w={kw}")
    out_h, out_w = output_size(h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"the output would be {out_h}x{out_w}: input {h}x{w} with pad "
                         f"({ph}, {pw}) is too small for kernel ({kh}, {kw}) with dilation "
                         f"({dh}, {dw}) and stride ({sh}, {sw})")
    return ModernGeometry(n, h, w, g, d, kh, kw, sh, sw, ph, pw, dh, dw, float(offset_scale),
                          rc, out_h, out_w)


def check_dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                dilation_h, dilation_w, group, group_channels, offset_scale, remove_center):
    """Check the arguments of :func:`refdcn.dcnv3`; return its :class:`ModernGeometry`.

    Raises
    ------
    TypeError, ValueError
        Naming the argument, what was received and what was expected.
    """
    geom = _common(input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                   dilation_w, group, group_channels, offset_scale, remove_center)
    n, ho, wo, g, k = geom.batch, geom.out_h, geom.out_w, geom.group, geom.taps
    shape = _array(offset, "offset", "(N, H_out, W_out, group*K*2)")
    if shape != (n, ho, wo, g * k * 2):
        raise ValueError(f"offset must have shape (N, H_out, W_out, group*K*2) = "
                         f"{(n, ho, wo, g * k * 2)} (K = {k} taps); got {shape}")
    shape = _array(mask, "mask", "(N, H_out, W_out, group*K)")
    if shape != (n, ho, wo, g * k):
        raise ValueError(f"mask must have shape (N, H_out, W_out, group*K) = "
                         f"{(n, ho, wo, g * k)} (K = {k} taps); got {shape}")
    return geom


def check_dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                dilation_h, dilation_w, group, group_channels, offset_scale, remove_center):
    """Check the arguments of :func:`refdcn.dcnv4`; return its :class:`ModernGeometry`.

    ``offset_mask.shape[3]`` may be any ``C_pad >= 3*group*K``; DCNv4's CUDA
    op also asserts ``C_pad % 8 == 0`` and its module uses
    :func:`packed_channels`, refdcn does not require either.
    """
    geom = _common(input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                   dilation_w, group, group_channels, offset_scale, remove_center)
    n, ho, wo, g, k = geom.batch, geom.out_h, geom.out_w, geom.group, geom.taps
    shape = _array(offset_mask, "offset_mask", "(N, H_out, W_out, C_pad)")
    if shape[:3] != (n, ho, wo) or shape[3] < 3 * g * k:
        raise ValueError(f"offset_mask must have shape (N, H_out, W_out, C_pad) with C_pad >= "
                         f"3*group*K = {3 * g * k} (K = {k} taps; DCNv4 uses C_pad = "
                         f"{packed_channels(g, k)}), i.e. {(n, ho, wo)} + (C_pad,); got {shape}")
    return geom


def check_grad_output(grad_output, geom):
    """``grad_output`` must have the output's shape (N, H_out, W_out, group*group_channels)."""
    shape = _array(grad_output, "grad_output", "(N, H_out, W_out, group*group_channels)")
    expected = (geom.batch, geom.out_h, geom.out_w, geom.channels)
    if shape != expected:
        raise ValueError(f"grad_output must have the output's shape (N, H_out, W_out, "
                         f"group*group_channels) = {expected}; got {shape}")
