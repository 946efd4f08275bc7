"""Convolution layers: :class:`Conv2d`, :class:`DeformConv2d` and the offset-predicting
:class:`DeformConv2dPack` (DCNv1) and :class:`ModulatedDeformConv2dPack` (DCNv2).

Both are im2col + matrix product, the organisation of every fast CPU
convolution (:mod:`refdcn.driver`):

* :class:`Conv2d` samples the regular grid, so its column matrix is a set of
  shifted copies of the (zero-padded) input: :func:`grid_im2col` /
  :func:`grid_col2im` below, one slice copy per kernel tap.  It computes
  exactly ``refdcn.deform_conv2d`` with all offsets zero (``tests/test_nn.py``
  checks that); ``method="deformable"`` runs it through that function
  instead, which is slower (it interpolates every sample), see
  :data:`CONV_METHODS`.
* :class:`DeformConv2d` calls :func:`refdcn.deform_conv2d` and
  :func:`refdcn.deform_conv2d_backward` on refdcn's fastest available backend
  (``backend="auto"``) with the offsets (and mask) it is given, as
  ``torchvision.ops.DeformConv2d`` does; :class:`DeformConv2dPack` and
  :class:`ModulatedDeformConv2dPack` predict them from the same input with a
  zero-initialised :class:`Conv2d`, as mmcv's layers of those names do.
"""

import numpy as np

from .. import api
from ..geometry import as_pair, output_size
from .module import Module, Parameter, uniform_fan_in

__all__ = ["Conv2d", "DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2dPack", "grid_im2col", "grid_col2im", "sigmoid", "CONV_METHODS"]

#: How :class:`Conv2d` computes: ``"grid"`` (regular im2col, the default) or
#: ``"deformable"`` (``refdcn.deform_conv2d`` with zero offsets).  Measured on 2
#: cores, batch 32, 3x3 padding 1, float32, forward + backward: ``"grid"`` is
#: 1.3-2.9x faster than ``"deformable"`` on the numba backend and ~10x faster
#: on the numpy backend (16->32 channels at 56x56, 32->64 and 64->128 at 28x28).
CONV_METHODS = ("grid", "deformable")


def grid_im2col(x, kernel, stride, padding, dilation=(1, 1)):
    """Column matrix of a regular convolution.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel, stride, padding, dilation : (int, int)

    Returns
    -------
    columns : ndarray, shape (N, C*kh*kw, H_out*W_out)
        Row ``c*kh*kw + i*kw + j`` holds ``x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]``
        (the layout of :mod:`refdcn.driver`).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    ho, wo = output_size(h, w, kernel, stride, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = np.empty((n, c, kh, kw, ho, wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                  j * dw:j * dw + sw * (wo - 1) + 1:sw]
    return cols.reshape(n, c * kh * kw, ho * wo)


def grid_col2im(grad_columns, shape, kernel, stride, padding, dilation=(1, 1)):
    """Adjoint of :func:`grid_im2col`: add each tap's rows back at their shift.

    Parameters
    ----------
    grad_columns : ndarray, shape (N, C*kh*kw, H_out*W_out)
    shape : (N, C, H, W), the input shape

    Returns
    -------
    grad_input : ndarray, shape (N, C, H, W)
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = shape
    ho, wo = output_size(h, w, kernel, stride, padding, dilation)
    g = grad_columns.reshape(n, c, kh, kw, ho, wo)
    gp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), grad_columns.dtype)
    for i in range(kh):
        for j in range(kw):
            gp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh,
               j * dw:j * dw + sw * (wo - 1) + 1:sw] += g[:, :, i, j]
    return gp[:, :, ph:ph + h, pw:pw + w]


def sigmoid(z):
    """Logistic function ``1 / (1 + exp(-z))`` without overflow (via tanh)."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class Conv2d(Module):
    """2-D convolution (cross-correlation), torchvision/PyTorch layout.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation : int or (int, int)
    bias : bool
    init : {"default", "zeros"}
        ``"default"``: weight and bias ``U(+-1/sqrt(C_in*kh*kw))`` (PyTorch's
        default); ``"zeros"``: all zero (the offset / mask convolutions of DCN).
    lr_mult : float
        Learning-rate multiplier of the weight and bias.
    rng : numpy.random.Generator, optional
    dtype : float32 or float64
    method : {"grid", "deformable"}
        See :data:`CONV_METHODS`.

    Shapes: input (N, C_in, H, W) -> output (N, C_out, H_out, W_out), N >= 0.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, bias=True,
                 init="default", lr_mult=1.0, rng=None, dtype=np.float32, method="grid",
                 name="conv", dilation=1):
        if init not in ("default", "zeros"):
            raise ValueError(f"init must be 'default' or 'zeros'; got {init!r}")
        if method not in CONV_METHODS:
            raise ValueError(f"method must be one of {CONV_METHODS}; got {method!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        self.dilation = as_pair(dilation, "dilation", 1)
        self.method = method
        rng = np.random.default_rng() if rng is None else rng
        shape = (self.out_channels, self.in_channels) + self.kernel
        fan_in = self.in_channels * self.kernel[0] * self.kernel[1]
        if init == "zeros":
            w = np.zeros(shape, dtype)
            b = np.zeros(self.out_channels, dtype) if bias else None
        else:
            w = uniform_fan_in(rng, shape, fan_in, dtype)
            b = uniform_fan_in(rng, self.out_channels, fan_in, dtype) if bias else None
        self.weight = Parameter(w, f"{name}.weight", lr_mult)
        self.bias = None if b is None else Parameter(b, f"{name}.bias", lr_mult)
        self._cache = None

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input of shape "
                             f"(N, {self.in_channels}, H, W); got {x.shape}")

    def forward(self, x):
        """(N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
        self._check_input(x)
        n, _, h, w = x.shape
        ho, wo = output_size(h, w, self.kernel, self.stride, self.padding, self.dilation)
        b = None if self.bias is None else self.bias.data
        if self.method == "deformable":
            zeros = np.zeros((n, 2 * self.kernel[0] * self.kernel[1], ho, wo), x.dtype)
            self._cache = (x, zeros)
            return api.deform_conv2d(x, zeros, self.weight.data, b, self.stride, self.padding,
                                     self.dilation)
        columns = grid_im2col(x, self.kernel, self.stride, self.padding, self.dilation)
        self._cache = (x.shape, columns)
        out = np.matmul(self.weight.data.reshape(self.out_channels, -1), columns)
        if b is not None:
            out += b[:, None]
        return out.reshape(n, self.out_channels, ho, wo)

    def backward(self, grad_output):
        """dL/d(output) (N, C_out, H_out, W_out) -> dL/d(input) (N, C_in, H, W)."""
        if self.method == "deformable":
            x, zeros = self._cache
            b = None if self.bias is None else self.bias.data
            g = api.deform_conv2d_backward(grad_output, x, zeros, self.weight.data, b,
                                           self.stride, self.padding, self.dilation)
            self.weight.grad += g.weight
            if self.bias is not None:
                self.bias.grad += g.bias
            return g.input
        shape, columns = self._cache
        n, pixels = shape[0], columns.shape[2]
        g = np.ascontiguousarray(grad_output).reshape(n, self.out_channels, pixels)
        w2 = self.weight.data.reshape(self.out_channels, -1)
        # dL/dW = sum_n G_n @ columns_n^T  (batched products, then the sum over images;
        # 2-4x faster than np.tensordot, which copies both operands to transpose them)
        self.weight.grad += np.matmul(g, columns.transpose(0, 2, 1)).sum(axis=0).reshape(
            self.weight.data.shape)
        if self.bias is not None:
            self.bias.grad += g.sum(axis=(0, 2))
        grad_columns = np.matmul(w2.T, g)          # (N, C_in*kh*kw, P)
        return grid_col2im(grad_columns, shape, self.kernel, self.stride, self.padding,
                           self.dilation)

    def __repr__(self):
        extra = f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel}, "
                f"stride={self.stride}, padding={self.padding}{extra}, "
                f"bias={self.bias is not None})")


class DeformConv2d(Module):
    """Deformable convolution with torchvision's contract: offsets (and mask) come from outside.

    The NumPy counterpart of ``torchvision.ops.DeformConv2d``
    (``torchvision/ops/deform_conv.py``): same constructor, defaults
    (``padding=0``, ``bias=True``) and initialisation (weight and bias
    ``U(+-1/sqrt(fan_in))``, ``fan_in = in_channels/groups*kh*kw``), and
    ``forward(input, offset, mask=None)``; the offset and mask layout is
    torchvision's (see :func:`refdcn.deform_conv2d`).  For layers that
    predict their own offsets use :class:`DeformConv2dPack` and
    :class:`ModulatedDeformConv2dPack`.

    Parameters
    ----------
    in_channels, out_channels : int
        Both divisible by ``groups``.
    kernel_size, stride, padding, dilation : int or (int, int)
    groups : int
    bias : bool
    rng : numpy.random.Generator, optional
    dtype : float32 or float64
    backend : str
        refdcn backend, ``"auto"`` = the fastest available.
    convention : {"torchvision", "mmcv"}
        Offset-gradient convention of :func:`refdcn.deform_conv2d_backward`.
    name : str
        Prefix of the parameter names.

    Shapes: ``forward(input (N, C_in, H, W), offset (N, 2*offset_groups*kh*kw,
    H_out, W_out), mask (N, offset_groups*kh*kw, H_out, W_out) or None)`` ->
    (N, C_out, H_out, W_out); ``backward(grad_output)`` returns the tuple
    ``(grad_input, grad_offset, grad_mask)`` (``grad_mask`` None without mask)
    and adds to the weight and bias gradients.

    Raises
    ------
    ValueError
        If ``in_channels`` or ``out_channels`` is not divisible by ``groups``,
        or for a bad ``convention``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, rng=None, dtype=np.float32, backend="auto",
                 convention="torchvision", name="dcn"):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.groups = int(groups)
        if self.groups < 1 or self.in_channels % self.groups:
            raise ValueError(f"in_channels must be divisible by groups; got in_channels="
                             f"{in_channels}, groups={groups}")
        if self.out_channels % self.groups:
            raise ValueError(f"out_channels must be divisible by groups; got out_channels="
                             f"{out_channels}, groups={groups}")
        self.kernel = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        self.dilation = as_pair(dilation, "dilation", 1)
        api.convention_code(convention)          # validates the name
        self.backend, self.convention = backend, convention
        rng = np.random.default_rng() if rng is None else rng
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel
        fan_in = shape[1] * self.kernel[0] * self.kernel[1]
        self.weight = Parameter(uniform_fan_in(rng, shape, fan_in, dtype), f"{name}.weight")
        self.bias = (Parameter(uniform_fan_in(rng, self.out_channels, fan_in, dtype),
                               f"{name}.bias") if bias else None)
        self._cache = None

    def __call__(self, x, offset, mask=None):
        return self.forward(x, offset, mask)

    def forward(self, x, offset, mask=None):
        """Deformable convolution of ``x`` sampled at ``offset`` (and weighted by ``mask``)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input of shape "
                             f"(N, {self.in_channels}, H, W); got {x.shape}")
        b = None if self.bias is None else self.bias.data
        self._cache = (x, offset, mask)
        return api.deform_conv2d(x, offset, self.weight.data, b, self.stride, self.padding,
                                 self.dilation, mask, backend=self.backend)

    def backward(self, grad_output):
        """dL/d(output) -> (dL/d(input), dL/d(offset), dL/d(mask) or None)."""
        x, offset, mask = self._cache
        b = None if self.bias is None else self.bias.data
        g = api.deform_conv2d_backward(grad_output, x, offset, self.weight.data, b, self.stride,
                                       self.padding, self.dilation, mask, backend=self.backend,
                                       convention=self.convention)
        self.weight.grad += g.weight
        if self.bias is not None:
            self.bias.grad += g.bias
        return g.input, g.offset, g.mask

    def __repr__(self):
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"kernel_size={self.kernel}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None})")


class DeformConv2dPack(Module):
    """Deformable convolution that predicts its own offsets, as mmcv's ``DeformConv2dPack``.

    ``offset = conv_offset(x)`` and ``y = deform_conv2d(x, offset, weight,
    bias, stride, padding, dilation)``.  ``conv_offset`` is a :class:`Conv2d`
    with ``2*deform_groups*kh*kw`` output channels, the kernel size, stride,
    padding and dilation of the layer, a bias, and weights *and* bias zero at
    the start, so the layer starts as a plain convolution (mmcv,
    ``mmcv/ops/deform_conv.py``, ``DeformConv2dPack.init_offset``).  mmcv's
    constructor and defaults: ``padding=0``, ``groups=1``,
    ``deform_groups=1``, ``bias=False`` (mmcv refuses ``bias=True``; refdcn
    allows it), main weight ``kaiming_uniform_(nonlinearity="relu")``, i.e.
    ``U(+-sqrt(6/fan_in))``.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups
        As mmcv's (and :class:`DeformConv2d`'s).
    deform_groups : int
        mmcv's name for offset groups (torchvision: ``offset_groups``).
    bias : bool
        Bias of the main convolution.
    init : {"mmcv", "pytorch"}
        Main weight: mmcv's ``U(+-sqrt(6/fan_in))`` or PyTorch's
        ``U(+-1/sqrt(fan_in))`` (the scaled-MNIST experiment's).
    offset_lr_mult : float
        Learning-rate multiplier of ``conv_offset`` (mmcv sets it in the
        optimiser config, ``dcn_offset_lr_mult``; 1 = none).
    rng, dtype, backend, convention, name
        As for :class:`DeformConv2d`.

    Shapes: (N, C_in, H, W) -> (N, C_out, H_out, W_out).
    """

    modulated = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deform_groups=1, bias=False, *, init="mmcv", offset_lr_mult=1.0,
                 rng=None, dtype=np.float32, backend="auto", convention="torchvision",
                 name="dcn"):
        if init not in ("mmcv", "pytorch"):
            raise ValueError(f"init must be 'mmcv' or 'pytorch'; got {init!r}")
        self.deform_groups = int(deform_groups)
        if self.deform_groups < 1 or int(in_channels) % self.deform_groups:
            raise ValueError(f"in_channels must be divisible by deform_groups; got in_channels="
                             f"{in_channels}, deform_groups={deform_groups}")
        rng = np.random.default_rng() if rng is None else rng
        self.conv = DeformConv2d(in_channels, out_channels, kernel_size, stride, padding,
                                 dilation, groups, bias, rng=rng, dtype=dtype, backend=backend,
                                 convention=convention, name=name)
        self._init_main(init, rng)
        self.taps = self.conv.kernel[0] * self.conv.kernel[1] * self.deform_groups
        self.conv_offset = Conv2d(self.conv.in_channels, (3 if self.modulated else 2) * self.taps,
                                  kernel_size=self.conv.kernel, stride=self.conv.stride,
                                  padding=self.conv.padding, dilation=self.conv.dilation,
                                  bias=True, init="zeros", lr_mult=offset_lr_mult, dtype=dtype,
                                  name=f"{name}.conv_offset")
        self._mask = None

    def _init_main(self, init, rng):
        if init == "mmcv":                       # kaiming_uniform_(nonlinearity="relu")
            w = self.conv.weight.data
            bound = np.sqrt(6.0 / w[0].size)
            w[...] = rng.uniform(-bound, bound, size=w.shape)

    @property
    def weight(self):
        """The main convolution's weight (a :class:`Parameter`)."""
        return self.conv.weight

    @property
    def bias(self):
        """The main convolution's bias (a :class:`Parameter`), or None."""
        return self.conv.bias

    def forward(self, x):
        """(N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
        offset, self._mask = self._split(self.conv_offset.forward(x))   # checks x's shape
        return self.conv.forward(x, offset, self._mask)

    def _split(self, z):
        offset = z[:, :2 * self.taps]
        return offset, (sigmoid(z[:, 2 * self.taps:]) if self.modulated else None)

    def backward(self, grad_output):
        """dL/d(output) -> dL/d(input), through the main and the offset (and mask) paths."""
        grad_input, grad_offset, grad_mask = self.conv.backward(grad_output)
        if self.modulated:          # d sigmoid(z)/dz = m (1 - m)
            m = self._mask
            grad_z = np.concatenate([grad_offset, grad_mask * m * (1 - m)], axis=1)
        else:
            grad_z = grad_offset
        return grad_input + self.conv_offset.backward(grad_z)

    def __repr__(self):
        c = self.conv
        return (f"{type(self).__name__}({c.in_channels}, {c.out_channels}, "
                f"kernel_size={c.kernel}, stride={c.stride}, padding={c.padding}, "
                f"dilation={c.dilation}, groups={c.groups}, deform_groups={self.deform_groups}, "
                f"bias={c.bias is not None})")


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """DCNv2 layer that predicts its own offsets and masks, as mmcv's ``ModulatedDeformConv2dPack``.

    ``z = conv_offset(x)`` with ``3*deform_groups*kh*kw`` channels; ``offset =
    z[:, :2K]``, ``mask = sigmoid(z[:, 2K:])`` (``K = deform_groups*kh*kw``:
    mmcv's ``chunk(3)`` then ``cat(o1, o2)`` is the same split), and ``y =
    deform_conv2d(x, offset, weight, bias, ..., mask=mask)``.  ``conv_offset``
    starts at zero (offsets 0, masks 0.5: the layer starts as half a plain
    convolution).  mmcv's defaults (``mmcv/ops/modulated_deform_conv.py``):
    ``padding=0``, ``bias=True``, main weight ``U(+-1/sqrt(in_channels*kh*kw))``
    and bias 0.

    Parameters are those of :class:`DeformConv2dPack` (``bias`` defaults to
    True; ``init="mmcv"`` is the initialisation above).
    """

    modulated = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deform_groups=1, bias=True, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deform_groups, bias, **kwargs)

    def _init_main(self, init, rng):
        if init == "mmcv":
            w = self.conv.weight.data
            bound = 1.0 / np.sqrt(self.conv.in_channels * w[0, 0].size)
            w[...] = rng.uniform(-bound, bound, size=w.shape)
            if self.conv.bias is not None:
                self.conv.bias.data[...] = 0
