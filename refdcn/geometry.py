"""Shapes, channel layout and argument checking of deformable convolution.

Layout (torchvision's, also mmcv's and ONNX's)
----------------------------------------------
``input``  : (N, C_in, H, W)
``weight`` : (C_out, C_in // groups, kh, kw)
``offset`` : (N, 2 * offset_groups * kh * kw, H_out, W_out); channel ``2*k`` is
             the row offset dy and ``2*k + 1`` the column offset dx of
             ``k = (g * kh + i) * kw + j`` (offset group ``g``, tap ``(i, j)``)
``mask``   : (N, offset_groups * kh * kw, H_out, W_out); channel ``k`` as above
``bias``   : (C_out,)
``output`` : (N, C_out, H_out, W_out)

``groups = C_in // weight.shape[1]`` and
``offset_groups = offset.shape[1] // (2 * kh * kw)`` are inferred, as in
``torchvision.ops.deform_conv2d``.  Input channel ``c`` belongs to convolution
group ``c // (C_in // groups)`` and offset group ``c // (C_in // offset_groups)``.
"""

from collections import namedtuple
from dataclasses import dataclass
import numbers

import numpy as np

__all__ = ["Geometry", "KernelGeometry", "as_pair", "output_size", "offset_channel",
           "mask_channel", "check_arguments", "check_grad_output", "check_dtype",
           "compute_dtype", "MAX_ATTRIBUTE", "ACCEPTED_DTYPES"]


#: Upper bound of every stride, padding and dilation component (int32, as in
#: torchvision and the CUDA kernels); larger values raise ValueError, naming the argument.
MAX_ATTRIBUTE = 2**31 - 1


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)


def as_pair(value, name, minimum, maximum=MAX_ATTRIBUTE):
    """``value`` as an ``(h, w)`` pair of Python ints, each in ``[minimum, maximum]``.

    ``value`` is an int or an ordered pair: a tuple, list or 1-D array of two
    ints (a set is refused: its order is not defined).  bools are refused.

    Raises
    ------
    TypeError
        If ``value`` is not an int or an ordered pair of ints.
    ValueError
        If a component is below ``minimum`` or above ``maximum``.
    """
    if _is_int(value):
        pair = (int(value), int(value))
    else:
        if not isinstance(value, (tuple, list, np.ndarray)):
            raise TypeError(f"{name} must be an int or an ordered pair of ints (h, w) (tuple, "
                            f"list or array); got {type(value).__name__} {value!r}")
        items = tuple(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else value
        if len(items) != 2 or not all(_is_int(v) for v in items):
            raise TypeError(f"{name} must be an int or a pair of ints (h, w); got {value!r}")
        pair = (int(items[0]), int(items[1]))
    if min(pair) < minimum or max(pair) > maximum:
        kind = "non-negative" if minimum == 0 else f">= {minimum}"
        raise ValueError(f"{name} must be {kind} and at most {maximum} (2**31 - 1); "
                         f"got {value!r}")
    return pair


def output_size(height, width, kernel, stride, padding, dilation):
    """Output size ``(H_out, W_out)`` of a (deformable) convolution.

    ``H_out = floor((H + 2*ph - (dh*(kh-1) + 1)) / sh) + 1``, same for W.

    >>> output_size(5, 4, (3, 2), (2, 1), (1, 0), (2, 1))
    (2, 3)
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    return ((height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1,
            (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1)


def offset_channel(group, i, j, kh, kw, axis):
    """Channel of ``offset`` holding the ``axis`` (0 = dy, 1 = dx) offset of tap (i, j).

    >>> offset_channel(1, 0, 1, 3, 2, 1)   # offset group 1, tap (0, 1), dx
    15
    """
    return 2 * ((group * kh + i) * kw + j) + axis


def mask_channel(group, i, j, kh, kw):
    """Channel of ``mask`` holding the modulation of tap (i, j) of an offset group."""
    return (group * kh + i) * kw + j


@dataclass(frozen=True)
class Geometry:
    """Every size a kernel needs, checked and inferred once per call."""
    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kh: int
    kw: int
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    offset_groups: int
    out_h: int
    out_w: int

    @property
    def taps(self):
        """Number of kernel taps ``kh * kw``."""
        return self.kh * self.kw

    @property
    def in_per_group(self):
        return self.in_channels // self.groups

    @property
    def out_per_group(self):
        return self.out_channels // self.groups

    @property
    def in_per_offset_group(self):
        return self.in_channels // self.offset_groups

    @property
    def out_pixels(self):
        return self.out_h * self.out_w

    def with_batch(self, batch):
        """The same geometry for a block of ``batch`` images."""
        return Geometry(batch, *(getattr(self, f) for f in _FIELDS[1:]))

    def output_rows(self, batch, row0, rows):
        """The geometry of output rows ``row0 .. row0+rows-1`` of ``batch`` images.

        A kernel given this geometry, the whole input and the offset/mask rows
        ``row0 .. row0+rows-1`` computes exactly those output rows: output row
        ``oy`` of the tile is row ``row0 + oy`` of the image, because the
        sampling row ``(row0 + oy)*sh - ph`` equals ``oy*sh - (ph - row0*sh)``
        (integers, so the float sampling point is bitwise the same).  The
        padding of the tile can therefore be negative.
        """
        fields = dict((f, getattr(self, f)) for f in _FIELDS)
        fields.update(batch=batch, out_h=rows,
                      padding=(self.padding[0] - row0 * self.stride[0], self.padding[1]))
        return Geometry(**fields)

    def kernel_record(self):
        """The sizes as a :class:`KernelGeometry` (what compiled kernels receive)."""
        return KernelGeometry(
            batch=self.batch, in_channels=self.in_channels, height=self.height,
            width=self.width, out_channels=self.out_channels, kh=self.kh, kw=self.kw,
            stride_h=self.stride[0], stride_w=self.stride[1],
            pad_h=self.padding[0], pad_w=self.padding[1],
            dilation_h=self.dilation[0], dilation_w=self.dilation[1],
            groups=self.groups, offset_groups=self.offset_groups,
            out_h=self.out_h, out_w=self.out_w, taps=self.taps, out_pixels=self.out_pixels,
            in_per_group=self.in_per_group, out_per_group=self.out_per_group,
            in_per_offset_group=self.in_per_offset_group)

    def flops(self):
        """Multiply-adds of the forward matrix product, times two."""
        return 2 * self.batch * self.out_channels * self.out_pixels * self.in_per_group * self.taps


_FIELDS = tuple(Geometry.__dataclass_fields__)

#: The sizes of a :class:`Geometry` as a named tuple of Python ints, the one record
#: every compiled kernel receives (Numba CPU ``njit`` and numba-cuda ``cuda.jit``
#: both accept a namedtuple of ints as an argument, typed ``NamedUniTuple(int64)``;
#: kernels read ``geo.out_w``, ``geo.stride_h``, never ``geo[10]``).
#: Build it with :meth:`Geometry.kernel_record`.  Fields: ``batch`` (images),
#: ``in_channels`` (C_in), ``height``, ``width`` (H, W), ``out_channels`` (C_out),
#: ``kh``, ``kw``, ``stride_h``, ``stride_w``, ``pad_h``, ``pad_w``, ``dilation_h``,
#: ``dilation_w``, ``groups`` (convolution groups), ``offset_groups``, ``out_h``,
#: ``out_w``, ``taps`` (kh*kw), ``out_pixels`` (out_h*out_w), ``in_per_group``
#: (C_in/groups), ``out_per_group`` (C_out/groups), ``in_per_offset_group``
#: (C_in/offset_groups).
KernelGeometry = namedtuple("KernelGeometry", [
    "batch", "in_channels", "height", "width", "out_channels", "kh", "kw",
    "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w",
    "groups", "offset_groups", "out_h", "out_w", "taps", "out_pixels",
    "in_per_group", "out_per_group", "in_per_offset_group"])


def _shape(a):
    return tuple(int(s) for s in a.shape)


def _check_ndim(a, name, ndim, layout):
    if a is None:
        raise TypeError(f"{name} must be an array of shape {layout}; got None")
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{name} must be an array of shape {layout}; got {type(a).__name__}")
    check_dtype(a, name)
    if len(a.shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}; got shape {_shape(a)}")


#: The dtypes refdcn computes in.  Every array argument must have one of
#: :data:`ACCEPTED_DTYPES`; see :func:`compute_dtype` for the one dtype policy.
COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
ACCEPTED_DTYPES = (np.dtype(np.float16),) + COMPUTE_DTYPES


def check_dtype(a, name):
    """The dtype of array ``a`` if refdcn accepts it (float16, float32 or float64).

    Refused, with a TypeError naming the argument: integer, bool, complex,
    object and string arrays, bfloat16 and other non-NumPy float types, and
    ``np.longdouble`` where it is wider than float64 (float128): refdcn never
    computes in a precision lower than an input's, and its widest is float64.
    """
    try:
        dt = np.dtype(a.dtype)
    except TypeError:
        dt = None
    if dt is not None and dt in ACCEPTED_DTYPES:
        return dt
    if dt is not None and dt.kind == "f":
        hint = ("its precision is beyond float64, the widest refdcn computes in; "
                "convert with .astype(np.float64)")
    elif dt is not None and dt.kind in "iub":
        hint = "convert with .astype(np.float32) or .astype(np.float64)"
    else:
        hint = "convert to float32 or float64"
    raise TypeError(f"{name} must have a floating dtype: float16, float32 or float64; got "
                    f"{a.dtype if dt is None else dt} ({hint})")


def compute_dtype(*arrays):
    """The dtype every backend computes in and returns: the one dtype policy.

    float64 if any array is float64; otherwise (float32 and float16 arrays)
    float32.  float16 is computed in float32 and returned as float32.  The
    arrays' dtypes must have passed :func:`check_dtype` (anything else,
    including float128, is refused there).  The ``"reference"`` backend
    computes in float64 whatever this says.

    >>> compute_dtype(np.zeros(1, np.float16), np.zeros(1, np.float32))
    dtype('float32')
    >>> compute_dtype(np.zeros(1, np.float32), None, np.zeros(1, np.float64))
    dtype('float64')
    """
    wide = any(np.dtype(a.dtype).itemsize >= 8 for a in arrays if a is not None)
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def check_arguments(input, offset, weight, bias, stride, padding, dilation, mask):
    """Check every argument of :func:`refdcn.deform_conv2d`; return its :class:`Geometry`.

    Works on anything with ``.shape`` and a NumPy-compatible ``.dtype``.

    Raises
    ------
    TypeError
        Non-array arguments, non-floating dtypes, non-integer stride/padding/dilation.
    ValueError
        Any shape that does not fit the layout (the message names the argument,
        the shape received and the one expected).
    """
    _check_ndim(input, "input", 4, "(N, C_in, H, W)")
    _check_ndim(offset, "offset", 4, "(N, 2*offset_groups*kh*kw, H_out, W_out)")
    _check_ndim(weight, "weight", 4, "(C_out, C_in/groups, kh, kw)")
    if mask is not None:
        _check_ndim(mask, "mask", 4, "(N, offset_groups*kh*kw, H_out, W_out)")
    if bias is not None:
        _check_ndim(bias, "bias", 1, "(C_out,)")

    sh, sw = as_pair(stride, "stride", 1)
    ph, pw = as_pair(padding, "padding", 0)
    dh, dw = as_pair(dilation, "dilation", 1)

    n, c_in, h, w = _shape(input)
    c_out, c_per_group, kh, kw = _shape(weight)
    if c_in < 1 or h < 1 or w < 1:
        raise ValueError(f"input must have at least one channel, row and column (C_in, H, W "
                         f">= 1; only the batch N may be 0); got shape {_shape(input)}")
    if kh < 1 or kw < 1:
        raise ValueError(f"weight must have a kernel of at least 1x1; got shape {_shape(weight)}")
    if c_per_group < 1:
        raise ValueError(f"weight.shape[1] (C_in/groups) must be >= 1; got weight shape "
                         f"{_shape(weight)}")
    if c_in % c_per_group != 0:
        raise ValueError(f"input channels C_in={c_in} must be a multiple of weight.shape[1]="
                         f"{c_per_group} (groups = C_in // weight.shape[1]); "
                         f"got input shape {_shape(input)} and weight shape {_shape(weight)}")
    groups = c_in // c_per_group
    if c_out < 1 or c_out % groups != 0:
        raise ValueError(f"weight.shape[0] (C_out={c_out}) must be a positive multiple of "
                         f"groups={groups}; got weight shape {_shape(weight)}")

    out_h, out_w = output_size(h, w, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"the output would be {out_h}x{out_w}: input {h}x{w} with padding {(ph, pw)} is too "
            f"small for kernel {(kh, kw)} with dilation {(dh, dw)} and stride {(sh, sw)}")

    taps = kh * kw
    off_shape = _shape(offset)
    offset_groups = off_shape[1] // (2 * taps)
    if offset_groups < 1 or off_shape[1] != 2 * offset_groups * taps:
        raise ValueError(f"offset.shape[1] must be 2*offset_groups*kh*kw, a positive multiple "
                         f"of 2*{kh}*{kw}={2 * taps}; got offset shape {off_shape}")
    if c_in % offset_groups != 0:
        raise ValueError(f"input channels C_in={c_in} must be a multiple of offset_groups="
                         f"{offset_groups} (inferred from offset shape {off_shape})")
    expected = (n, 2 * offset_groups * taps, out_h, out_w)
    if off_shape != expected:
        raise ValueError(f"offset must have shape (N, 2*offset_groups*kh*kw, H_out, W_out) = "
                         f"{expected}; got {off_shape}")
    if mask is not None:
        expected = (n, offset_groups * taps, out_h, out_w)
        if _shape(mask) != expected:
            raise ValueError(f"mask must have shape (N, offset_groups*kh*kw, H_out, W_out) = "
                             f"{expected}; got {_shape(mask)}")
    if bias is not None and _shape(bias) != (c_out,):
        raise ValueError(f"bias must have shape (C_out,) = ({c_out},); got {_shape(bias)}")
    return Geometry(n, c_in, h, w, c_out, kh, kw, (sh, sw), (ph, pw), (dh, dw),
                    groups, offset_groups, out_h, out_w)


def check_grad_output(grad_output, geom):
    """Check that ``grad_output`` has the output's shape (N, C_out, H_out, W_out)."""
    _check_ndim(grad_output, "grad_output", 4, "(N, C_out, H_out, W_out)")
    expected = (geom.batch, geom.out_channels, geom.out_h, geom.out_w)
    if _shape(grad_output) != expected:
        raise ValueError(f"grad_output must have the output's shape (N, C_out, H_out, W_out) = "
                         f"{expected}; got {_shape(grad_output)}")
