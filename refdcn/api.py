"""The public entry points: :func:`deform_conv2d` and :func:`deform_conv2d_backward`."""

from collections import namedtuple

import numpy as np

from . import backends
from .bilinear import BORDER_MMCV, BORDER_TORCHVISION
from .geometry import check_arguments, check_grad_output, compute_dtype

__all__ = ["deform_conv2d", "deform_conv2d_backward", "Gradients", "CONVENTIONS"]

#: Names of the offset-gradient conventions and their codes in :mod:`refdcn.bilinear`.
CONVENTIONS = {"torchvision": BORDER_TORCHVISION, "mmcv": BORDER_MMCV}

Gradients = namedtuple("Gradients", ["input", "offset", "mask", "weight", "bias"])
Gradients.__doc__ = """The five gradients of :func:`deform_conv2d` (same shapes as the inputs).

``mask`` and ``bias`` are None when the forward had no mask / no bias."""


def convention_code(convention):
    """The integer code of a convention name (``"torchvision"`` or ``"mmcv"``)."""
    try:
        return CONVENTIONS[convention]
    except (KeyError, TypeError):
        raise ValueError(f"convention must be one of {list(CONVENTIONS)}; "
                         f"got {convention!r}") from None


_ARRAY_NAMES = ("input", "offset", "weight", "bias", "mask")


def _prepare(module, arrays, names=_ARRAY_NAMES):
    """Coerce arrays for a backend (NumPy arrays, or device arrays for "cuda").

    Anything the conversion refuses (a ragged nested list, a PyTorch tensor
    that requires grad, a bfloat16 tensor, a tensor on another device) raises
    TypeError or ValueError naming the argument, what was received and what
    was expected.
    """
    coerce = getattr(module, "coerce", np.asarray)
    return [None if a is None else _coerce(coerce, a, name) for a, name in zip(arrays, names)]


def _coerce(coerce, array, name):
    if getattr(array, "requires_grad", False):
        raise TypeError(f"{name} is a {type(array).__name__} that requires grad; refdcn does "
                        f"not record autograd graphs: pass {name}.detach()")
    try:
        return coerce(array)
    except ValueError as exc:   # NumPy: ragged nested sequences
        raise ValueError(f"{name} must be an array (or a rectangular nested sequence) of "
                         f"numbers; got {type(array).__name__} that NumPy cannot convert: "
                         f"{exc}") from None
    except (TypeError, RuntimeError) as exc:   # torch: bfloat16, other devices, ...
        dtype = getattr(array, "dtype", None)
        raise TypeError(f"{name} must be a NumPy-convertible array of dtype float16, float32 "
                        f"or float64; got {type(array).__name__}"
                        f"{'' if dtype is None else f' of dtype {dtype}'}: {exc}") from None


def _to_compute(module, arrays, dtype):
    if module.CAPABILITIES.device != "cpu":
        return arrays
    return [None if a is None else np.ascontiguousarray(a, dtype=dtype) for a in arrays]


def _dtype_for(module, arrays):
    if module.CAPABILITIES.compute_dtype == "float64":
        return np.dtype(np.float64)
    return compute_dtype(*arrays)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  *, backend="auto"):
    r"""Deformable convolution (DCNv1) and modulated deformable convolution (DCNv2).

    Same arguments, layout and semantics as ``torchvision.ops.deform_conv2d``.

    Parameters
    ----------
    input : array, shape (N, C_in, H, W)
    offset : array, shape (N, 2*offset_groups*kh*kw, H_out, W_out)
        Channel ``2*k`` holds the row offset dy and ``2*k + 1`` the column
        offset dx of ``k = (g*kh + i)*kw + j`` (offset group ``g``, kernel tap
        ``(i, j)``): interleaved (dy, dx) pairs, taps in row-major order.
        ``offset_groups = offset.shape[1] // (2*kh*kw)``; input channel ``c``
        uses offset group ``c // (C_in // offset_groups)``.
    weight : array, shape (C_out, C_in // groups, kh, kw)
        ``groups = C_in // weight.shape[1]``.
    bias : array, shape (C_out,), optional
    stride, padding, dilation : int or (int, int)
        Stride >= 1, padding >= 0 (zero padding), dilation >= 1.
    mask : array, shape (N, offset_groups*kh*kw, H_out, W_out), optional
        Modulation of each tap (DCNv2), used raw (no sigmoid).  None: DCNv1.
    backend : str
        ``"auto"`` (the fastest CPU backend here), or a name from
        :func:`refdcn.backends.available`.

    Returns
    -------
    output : array, shape (N, C_out, H_out, W_out)
        ``H_out = (H + 2*ph - dh*(kh-1) - 1) // sh + 1`` (same for W).
        dtype (the one policy, :func:`refdcn.geometry.compute_dtype`, for
        every backend): float64 if any array argument is float64, else float32
        (float16 inputs are computed in float32); the ``"reference"`` backend
        always computes and returns float64.  Other dtypes are refused (see
        Raises).  The ``"cuda"`` backend returns a device array for device
        inputs (see its documentation).

    Notes
    -----
    .. math::

        out[n, o, y, x] = b_o + \sum_{c, i, j} W[o, c, i, j]\, m_{ij}\,
                          S\!\left(I[n, c],\; y s_h - p_h + i d_h + \Delta y_{ij},\;
                                   x s_w - p_w + j d_w + \Delta x_{ij}\right)

    where ``S`` is bilinear sampling with a one-pixel zero border (it is 0 on
    and beyond ``y = -1``, ``y = H``, ``x = -1``, ``x = W``); see
    :mod:`refdcn.bilinear`.

    Non-finite values: an offset of +-inf (or any huge offset, 1e6, 1e30)
    samples outside the image and contributes 0; a NaN offset makes the
    outputs that use it NaN; every other value enters by IEEE arithmetic, and
    every backend gives the same NaN/+inf/-inf pattern (the rule of
    :func:`deform_conv2d_backward`).  No backend reads or writes outside its
    arrays for any of these.

    Examples
    --------
    >>> import numpy as np, refdcn
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> w = np.ones((1, 1, 2, 2))
    >>> off = np.zeros((1, 8, 2, 2)); off[0, 0, 0, 0] = 0.5   # dy of tap (0, 0) at pixel (0, 0)
    >>> refdcn.deform_conv2d(x, off, w)[0, 0]
    array([[ 9.5, 12. ],
           [20. , 24. ]])

    Raises
    ------
    TypeError, ValueError
        For arguments of the wrong type, dtype or shape; the message names the
        argument, what was received and what was expected.  TypeError: an
        array dtype other than float16/float32/float64 (integer, bool,
        complex, object, bfloat16, float128: precision beyond float64 is never
        silently dropped), a PyTorch tensor that requires grad, a stride,
        padding or dilation that is not an int or an ordered pair (a set is
        refused).  ValueError: a ragged nested list, a shape that does not
        fit the layout, C_in, H or W of 0 (an empty batch, N = 0, is
        allowed), stride/dilation < 1, padding < 0, or any of them above
        ``2**31 - 1``.
    refdcn.backends.BackendUnavailable
        If the requested backend does not work here (the message says why).
    """
    module = backends.get(backend)
    input, offset, weight, bias, mask = _prepare(module, (input, offset, weight, bias, mask))
    geom = check_arguments(input, offset, weight, bias, stride, padding, dilation, mask)
    dtype = _dtype_for(module, (input, offset, weight, bias, mask))
    input, offset, weight, bias, mask = _to_compute(module, (input, offset, weight, bias, mask),
                                                    dtype)
    return module.forward(input, offset, mask, weight, bias, geom, dtype)


def deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                           dilation=1, mask=None, *, backend="auto", convention="torchvision"):
    r"""Gradients of :func:`deform_conv2d` with respect to all five inputs.

    Parameters
    ----------
    grad_output : array, shape (N, C_out, H_out, W_out)
        Gradient of the loss with respect to the output.
    input, offset, weight, bias, stride, padding, dilation, mask, backend
        As in :func:`deform_conv2d`.
    convention : {"torchvision", "mmcv"}
        The offset gradient of a sample that lands exactly on ``y = -1`` or
        ``x = -1`` (the forward, and every other gradient, is the same):

        * ``"torchvision"`` (default): the inward one-sided derivative, as
          ``torchvision.ops.deform_conv2d`` computes it.  The sample itself is 0
          there, but moving it down by ``e`` gives ``e * input[0, x]``.
        * ``"mmcv"``: 0 for every sample outside the open square
          ``(-1, H) x (-1, W)``, as mmcv, MSRA's DCNv2_op, CharlesShang/DCNv2
          and DCNv4 do.

        Worked example: a 1x1 kernel, zero offsets and padding 1 on a 1x1
        image with value 3.  Output pixel (0, 0) samples at ``(-1, -1)``: its
        value is 0 under both rules.  Output pixel (0, 1) samples at
        ``(-1, 0)``, exactly on ``y = -1``: torchvision's dL/d(dy) there is
        ``grad_output * weight * 3`` (row 0 is one pixel below), mmcv's is 0.
        This is exactly what happens at the first training step of every
        zero-initialised offset layer with padding >= 1.

    Returns
    -------
    Gradients
        Named tuple ``(input, offset, mask, weight, bias)`` with the shapes of
        the corresponding inputs; ``mask`` / ``bias`` are None when those inputs
        were None.  dtype as for :func:`deform_conv2d`.

    Notes
    -----
    With ``t = G[n,o,y,x] W[o,c,i,j]`` and ``S``, ``(y_s, x_s)`` the sample and
    sampling point of that term:
    ``dL/dbias_o = sum G``, ``dL/dW = sum G m S``, ``dL/dm = sum t S``,
    ``dL/d(dy) = sum t m dS/dy``, ``dL/d(dx) = sum t m dS/dx``, and
    ``dL/dinput`` scatters ``t m w_ab`` to the four corners of each sample (the
    adjoint of bilinear sampling).

    Non-finite values (one rule, identical on every backend): the gradients
    are these formulas evaluated in IEEE arithmetic through the column
    gradient ``t = sum_o G W`` (the sum over output channels first, as every
    im2col + GEMM backend computes it), with ``dS/dy``, ``dS/dx`` per channel
    (:func:`refdcn.bilinear.interpolate_gradient`) and the mask multiplying the
    channel sum of the offset gradient; :mod:`refdcn.reference.loops` spells
    it out.  Every backend gives the same NaN/+inf/-inf/finite pattern in all
    five gradients for +-inf or NaN in any argument.
    """
    code = convention_code(convention)
    module = backends.get(backend)
    grad_output, input, offset, weight, bias, mask = _prepare(
        module, (grad_output, input, offset, weight, bias, mask), ("grad_output",) + _ARRAY_NAMES)
    geom = check_arguments(input, offset, weight, bias, stride, padding, dilation, mask)
    check_grad_output(grad_output, geom)
    dtype = _dtype_for(module, (grad_output, input, offset, weight, bias, mask))
    grad_output, input, offset, weight, bias, mask = _to_compute(
        module, (grad_output, input, offset, weight, bias, mask), dtype)
    grads = module.backward(grad_output, input, offset, mask, weight, bias, geom, dtype, code)
    return Gradients(*grads)
