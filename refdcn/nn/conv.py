"""Convolution layers: :class:`Conv2d` and :class:`DeformConv2d` (DCNv1 / DCNv2).

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
  (``backend="auto"``), with offsets (and, for DCNv2, a mask) predicted from
  the same input by a zero-initialised :class:`Conv2d`.
"""

import numpy as np

from .. import api
from ..geometry import as_pair, output_size
from .module import Module, Parameter, uniform_fan_in

__all__ = ["Conv2d", "DeformConv2d", "grid_im2col", "grid_col2im", "sigmoid", "CONV_METHODS"]

#: How :class:`Conv2d` computes: ``"grid"`` (regular im2col, the default) or
#: ``"deformable"`` (``refdcn.deform_conv2d`` with zero offsets).  Measured on 2
#: cores, batch 32, 3x3 padding 1, float32, forward + backward: ``"grid"`` is
#: 1.3-2.9x faster than ``"deformable"`` on the numba backend and ~10x faster
#: on the numpy backend (16->32 channels at 56x56, 32->64 and 64->128 at 28x28).
CONV_METHODS = ("grid", "deformable")


def grid_im2col(x, kernel, stride, padding):
    """Column matrix of a regular convolution.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel, stride, padding : (int, int)

    Returns
    -------
    columns : ndarray, shape (N, C*kh*kw, H_out*W_out)
        Row ``c*kh*kw + i*kw + j`` holds ``x_padded[n, c, oy*sh + i, ox*sw + j]``
        (the layout of :mod:`refdcn.driver`).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    ho, wo = output_size(h, w, kernel, stride, padding, (1, 1))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = np.empty((n, c, kh, kw, ho, wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    return cols.reshape(n, c * kh * kw, ho * wo)


def grid_col2im(grad_columns, shape, kernel, stride, padding):
    """Adjoint of :func:`grid_im2col`: add each tap's rows back at their shift.

    Parameters
    ----------
    grad_columns : ndarray, shape (N, C*kh*kw, H_out*W_out)
    shape : (N, C, H, W), the input shape

    Returns
    -------
    grad_input : ndarray, shape (N, C, H, W)
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = shape
    ho, wo = output_size(h, w, kernel, stride, padding, (1, 1))
    g = grad_columns.reshape(n, c, kh, kw, ho, wo)
    gp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), grad_columns.dtype)
    for i in range(kh):
        for j in range(kw):
            gp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += g[:, :, i, j]
    return gp[:, :, ph:ph + h, pw:pw + w]


def sigmoid(z):
    """Logistic function ``1 / (1 + exp(-z))`` without overflow (via tanh)."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class Conv2d(Module):
    """2-D convolution (cross-correlation), torchvision/PyTorch layout.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding : int or (int, int)
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

    Shapes: input (N, C_in, H, W) -> output (N, C_out, H_out, W_out).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, bias=True,
                 init="default", lr_mult=1.0, rng=None, dtype=np.float32, method="grid",
                 name="conv"):
        if init not in ("default", "zeros"):
            raise ValueError(f"init must be 'default' or 'zeros'; got {init!r}")
        if method not in CONV_METHODS:
            raise ValueError(f"method must be one of {CONV_METHODS}; got {method!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
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
        ho, wo = output_size(h, w, self.kernel, self.stride, self.padding, (1, 1))
        b = None if self.bias is None else self.bias.data
        if self.method == "deformable":
            zeros = np.zeros((n, 2 * self.kernel[0] * self.kernel[1], ho, wo), x.dtype)
            self._cache = (x, zeros)
            return api.deform_conv2d(x, zeros, self.weight.data, b, self.stride, self.padding)
        columns = grid_im2col(x, self.kernel, self.stride, self.padding)
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
                                           self.stride, self.padding)
            self.weight.grad += g.weight
            if self.bias is not None:
                self.bias.grad += g.bias
            return g.input
        shape, columns = self._cache
        n = shape[0]
        g = np.ascontiguousarray(grad_output).reshape(n, self.out_channels, -1)
        w2 = self.weight.data.reshape(self.out_channels, -1)
        # dL/dW = sum_n G_n @ columns_n^T  (batched products, then the sum over images;
        # 2-4x faster than np.tensordot, which copies both operands to transpose them)
        self.weight.grad += np.matmul(g, columns.transpose(0, 2, 1)).sum(axis=0).reshape(
            self.weight.data.shape)
        if self.bias is not None:
            self.bias.grad += g.sum(axis=(0, 2))
        grad_columns = np.matmul(w2.T, g)          # (N, C_in*kh*kw, P)
        return grid_col2im(grad_columns, shape, self.kernel, self.stride, self.padding)

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None})")


class DeformConv2d(Module):
    """Deformable convolution with its own offset (and mask) predictor.

    ``z = offset_conv(x)``, ``offset = z[:, :2K]``, for DCNv2
    ``mask = sigmoid(z[:, 2K:3K])`` (``K = kh*kw``), and
    ``y = refdcn.deform_conv2d(x, offset, weight, bias, stride, padding, mask=mask)``.

    ``offset_conv`` predicts the offsets (2K channels, torchvision's interleaved
    (dy, dx) layout) and, with ``modulation=True``, the mask logits (K more
    channels): one :class:`Conv2d` with 2K or 3K output channels, which is the
    same as separate offset and mask convolutions side by side (mmcv's
    ``ModulatedDeformConv2dPack`` does the same) and shares their im2col.  It
    has the kernel size, stride and padding of the main convolution (so its
    output is the size of ``y``), a bias, and starts at zero, weights *and*
    bias: the layer starts as a plain convolution with offsets 0 and, for
    DCNv2, mask 0.5 everywhere, as in mmcv and the DCNv2 paper.  Its learning
    rate is ``offset_lr_mult`` (0.1) times the base rate.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding : int or (int, int)
    bias : bool
        Bias of the main convolution.
    modulation : bool
        DCNv2 (with a mask) if True, DCNv1 otherwise.
    offset_lr_mult : float
    rng, dtype
        As for :class:`Conv2d`.
    backend : str
        refdcn backend, ``"auto"`` = the fastest available.
    convention : {"torchvision", "mmcv"}
        Offset-gradient convention of :func:`refdcn.deform_conv2d_backward`.

    Shapes: input (N, C_in, H, W) -> output (N, C_out, H_out, W_out).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                 modulation=False, offset_lr_mult=0.1, rng=None, dtype=np.float32,
                 backend="auto", convention="torchvision", name="dcn"):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        self.modulation = bool(modulation)
        self.backend = backend
        api.convention_code(convention)          # validates the name
        self.convention = convention
        rng = np.random.default_rng() if rng is None else rng
        shape = (self.out_channels, self.in_channels) + self.kernel
        fan_in = self.in_channels * self.kernel[0] * self.kernel[1]
        self.weight = Parameter(uniform_fan_in(rng, shape, fan_in, dtype), f"{name}.weight")
        self.bias = (Parameter(uniform_fan_in(rng, self.out_channels, fan_in, dtype),
                               f"{name}.bias") if bias else None)
        self.taps = self.kernel[0] * self.kernel[1]
        self.offset_conv = Conv2d(self.in_channels, (3 if self.modulation else 2) * self.taps,
                                  kernel_size=self.kernel, stride=self.stride,
                                  padding=self.padding, bias=True, init="zeros",
                                  lr_mult=offset_lr_mult, dtype=dtype, name=f"{name}.offset_conv")
        self._cache = None

    def forward(self, x):
        """(N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DeformConv2d expects input of shape (N, {self.in_channels}, H, W); "
                             f"got {x.shape}")
        z = self.offset_conv.forward(x)
        offset = z[:, :2 * self.taps]
        mask = sigmoid(z[:, 2 * self.taps:]) if self.modulation else None
        b = None if self.bias is None else self.bias.data
        self._cache = (x, offset, mask)
        return api.deform_conv2d(x, offset, self.weight.data, b, self.stride, self.padding,
                                 mask=mask, backend=self.backend)

    def backward(self, grad_output):
        """dL/d(output) -> dL/d(input), through the main and the offset/mask paths."""
        x, offset, mask = self._cache
        b = None if self.bias is None else self.bias.data
        g = api.deform_conv2d_backward(grad_output, x, offset, self.weight.data, b, self.stride,
                                       self.padding, mask=mask, backend=self.backend,
                                       convention=self.convention)
        self.weight.grad += g.weight
        if self.bias is not None:
            self.bias.grad += g.bias
        if self.modulation:
            # d sigmoid(z)/dz = m (1 - m)
            grad_z = np.concatenate([g.offset, g.mask * mask * (1 - mask)], axis=1)
        else:
            grad_z = g.offset
        return g.input + self.offset_conv.backward(grad_z)

    def __repr__(self):
        kind = "DCNv2" if self.modulation else "DCNv1"
        return (f"DeformConv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel}, "
                f"stride={self.stride}, padding={self.padding}, {kind})")
