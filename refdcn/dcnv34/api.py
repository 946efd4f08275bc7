"""The public DCNv3 / DCNv4 operators: :func:`dcnv3`, :func:`dcnv4` and their backward passes.

Both operators compute the same function (:mod:`refdcn.reference.dcnv3_loops`
states it term by term); they differ in how offsets and modulation weights are
stored (:mod:`refdcn.dcnv34.geometry`).  One API, many backends: a backend
module provides ``forward(input, offset, mask, geom, dtype)`` and
``backward(grad_output, input, offset, mask, geom, dtype, convention)`` on the
normalised views ``offset`` (N, H_out, W_out, G, K, 2) and ``mask``
(N, H_out, W_out, G, K); :data:`BACKENDS` lists those that implement them.
"""

from collections import namedtuple
import importlib

import numpy as np

from .. import backends as _registry
from ..api import convention_code
from .geometry import check_dcnv3, check_dcnv4, check_grad_output, compute_dtype

__all__ = ["dcnv3", "dcnv3_backward", "dcnv4", "dcnv4_backward", "DCNv3Gradients",
           "DCNv4Gradients", "BACKENDS", "available", "capabilities", "fast_backends", "get_backend",
           "tap_softmax", "tap_softmax_backward"]

#: Backends implementing DCNv3/DCNv4 (same names as :data:`refdcn.backends.REGISTRY`), in
#: order of preference for ``backend="auto"`` last-to-first: ``auto`` takes the first of
#: :data:`AUTO_ORDER` that loads.
BACKENDS = {
    "reference": "refdcn.reference.dcnv3_loops",
    "numba": "refdcn.backends.numba_dcnv3",
}
AUTO_ORDER = ("numba", "reference")

DCNv3Gradients = namedtuple("DCNv3Gradients", ["input", "offset", "mask"])
DCNv3Gradients.__doc__ = """Gradients of :func:`dcnv3`: the shapes of ``input``, ``offset``, ``mask``."""
DCNv4Gradients = namedtuple("DCNv4Gradients", ["input", "offset_mask"])
DCNv4Gradients.__doc__ = """Gradients of :func:`dcnv4`: the shapes of ``input`` and
``offset_mask`` (the padding channels of ``offset_mask`` get gradient 0)."""

_modules, _errors = {}, {}


def _load(name):
    if name in _modules:
        return _modules[name]
    if name not in _errors:
        try:
            _modules[name] = importlib.import_module(BACKENDS[name])
            return _modules[name]
        except (ImportError, OSError, _registry.BackendUnavailable) as exc:
            _errors[name] = str(exc) or type(exc).__name__
    return None


def available():
    """Names of the backends that run DCNv3/DCNv4 here."""
    return [name for name in BACKENDS if _load(name) is not None]


def capabilities(name):
    """The :class:`refdcn.backends.Capabilities` of a DCNv3/DCNv4 backend (``CAPABILITIES``)."""
    return get_backend(name).CAPABILITIES


def fast_backends():
    """The available backends that are not the explicit-loop oracle."""
    return [name for name in available() if not capabilities(name).oracle]


def get_backend(name):
    """The backend module for ``name`` (``"auto"``: the first of :data:`AUTO_ORDER` that loads).

    Raises
    ------
    ValueError
        For a name that is not a refdcn backend.
    refdcn.backends.BackendUnavailable
        For a refdcn backend without DCNv3/DCNv4 kernels (``numpy``, ``cython``,
        ``cuda``), or one that does not load here (the message says why).
    """
    if name == "auto":
        for candidate in AUTO_ORDER:
            if _load(candidate) is not None:
                return _modules[candidate]
    if not isinstance(name, str) or (name not in BACKENDS and name not in _registry.REGISTRY):
        raise ValueError(f"backend must be 'auto' or one of {list(BACKENDS)} for DCNv3/DCNv4; "
                         f"got {name!r}")
    if name not in BACKENDS:
        raise _registry.BackendUnavailable(
            f"backend {name!r} has no DCNv3/DCNv4 kernels (implemented by: "
            f"{', '.join(BACKENDS)})")
    module = _load(name)
    if module is None:
        raise _registry.BackendUnavailable(f"backend {name!r} is not available here: "
                                           f"{_errors[name]}")
    return module


# ------------------------------------------------------------------ softmax (DCNv4's flag)
def tap_softmax(mask):
    """Softmax over the last axis (the K taps of a group), in float64.

    ``exp(m - max) / sum exp(m - max)``: DCNv3's module applies it before the op;
    DCNv4's kernel applies it when its ``softmax`` flag is set
    (``dcnv4_im2col_cuda.cuh``, ``forward_kernel_dcn_reg``).
    """
    m = np.asarray(mask, dtype=np.float64)
    e = np.exp(m - m.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def tap_softmax_backward(weights, grad_weights):
    """The gradient with respect to the softmax's input: ``s * (g - sum(g * s))``."""
    return weights * (grad_weights - (grad_weights * weights).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------ views of the layouts
def _dcnv3_views(geom, offset, mask):
    shape = (geom.batch, geom.out_h, geom.out_w, geom.group, geom.taps)
    return np.reshape(offset, shape + (2,)), np.reshape(mask, shape)


def _dcnv4_views(geom, offset_mask):
    g, k = geom.group, geom.taps
    per = np.asarray(offset_mask)[..., :3 * g * k].reshape(
        (geom.batch, geom.out_h, geom.out_w, g, 3 * k))
    return per[..., :2 * k].reshape(per.shape[:4] + (k, 2)), per[..., 2 * k:]


def _prepare(module, arrays, dtype_from):
    dtype = np.dtype(np.float64) if module.CAPABILITIES.compute_dtype == "float64" \
        else compute_dtype(*dtype_from)
    return dtype, [np.ascontiguousarray(a, dtype=dtype) for a in arrays]


# ------------------------------------------------------------------ DCNv3
def dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h=1, stride_w=1, pad_h=0, pad_w=0,
          dilation_h=1, dilation_w=1, group=1, group_channels=None, offset_scale=1.0,
          remove_center=False, *, backend="auto"):
    r"""DCNv3 (InternImage): grouped deformable sampling with per-tap weights, channels-last.

    Arguments in the order of InternImage's ``dcnv3_core_pytorch``
    (``classification/ops_dcnv3/functions/dcnv3_func.py``; ``DCNv3Function``
    takes the same plus ``im2col_step``, a batching knob that does not change
    the result).

    Parameters
    ----------
    input : array, shape (N, H, W, group*group_channels)
        Channels-last.  Any strides (a transposed NCHW array is fine).
    offset : array, shape (N, H_out, W_out, group*K*2)
        Channel ``g*2K + 2*t`` is the column offset dx and ``g*2K + 2*t + 1``
        the row offset dy of tap ``t`` of group ``g``; taps x-major (``t = j*kh
        + i``), the centre skipped if ``remove_center``; ``K = kh*kw -
        remove_center``.  Unit: input pixels before ``offset_scale``.
    mask : array, shape (N, H_out, W_out, group*K)
        Weight of each tap, channel ``g*K + t``, used as given.  DCNv3's module
        passes ``softmax`` of its Linear layer over the K taps of each group
        (:func:`tap_softmax`); the op itself applies none.
    kernel_h, kernel_w : int
        Kernel size (>= 1).
    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w : int
        Stride (>= 1), zero padding (>= 0), dilation (>= 1).
    group : int
        G; the channels are split into G groups that share offsets and weights.
    group_channels : int, optional
        D; default ``C // group``; must satisfy ``group * group_channels == C``.
    offset_scale : float
        Scales the taps and the offsets about the kernel centre: the sampling
        point is ``c + (tap*dilation - centre + offset) * offset_scale`` with
        ``c = o*stride - pad + centre``, ``centre = (dilation*(k-1)) // 2``
        (:func:`refdcn.bilinear.scaled_sampling_point`).  1: torchvision's grid.
    remove_center : bool
        Drop the centre tap (odd square kernels only; ValueError otherwise).
    backend : str
        ``"auto"`` (numba if available, else reference), ``"numba"`` or
        ``"reference"`` (:data:`BACKENDS`).

    Returns
    -------
    output : ndarray, shape (N, H_out, W_out, group*group_channels)
        ``H_out = (H + 2*pad_h - (dilation_h*(kernel_h-1)+1)) // stride_h + 1``.
        float64 if any input is float64, else float32 (float16 computed in
        float32); the reference backend returns float64.

    Raises
    ------
    TypeError, ValueError
        Wrong types, dtypes or shapes; the message names the argument, what was
        received and what was expected.
    refdcn.backends.BackendUnavailable
        A backend without DCNv3/DCNv4 kernels (numpy, cython, cuda) or one that
        does not load here.

    Notes
    -----
    .. math::

        out[n, y, x, gD + d] = \sum_t m_{g,t}\, S\big(I[n, :, :, gD + d],\;
            c_y + (i_t d_h - k_y + \Delta y_{g,t}) s,\; c_x + (j_t d_w - k_x + \Delta x_{g,t}) s\big)

    ``S`` is bilinear sampling with a one-pixel zero border (torchvision's;
    0 on and beyond -1 and H, W), as in InternImage's ``dcnv3_im2col_bilinear``.
    With ``offset_scale = 1`` this is grouped DCNv2 with a diagonal weight
    (see ``tests/test_dcnv34_oracles.py``).
    """
    module = get_backend(backend)
    geom = check_dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                       pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                       remove_center)
    dtype, (x, off, msk) = _prepare(module, (input, *_dcnv3_views(geom, offset, mask)),
                                    (input, offset, mask))
    return module.forward(x, off, msk, geom, dtype)


def dcnv3_backward(grad_output, input, offset, mask, kernel_h, kernel_w, stride_h=1,
                   stride_w=1, pad_h=0, pad_w=0, dilation_h=1, dilation_w=1, group=1,
                   group_channels=None, offset_scale=1.0, remove_center=False, *,
                   backend="auto", convention="mmcv"):
    """Gradients of :func:`dcnv3` with respect to ``input``, ``offset`` and ``mask``.

    Parameters
    ----------
    grad_output : array, shape (N, H_out, W_out, group*group_channels)
    input ... remove_center, backend
        As in :func:`dcnv3`.
    convention : {"mmcv", "torchvision"}
        The offset gradient of a sample exactly on ``y = -1`` or ``x = -1``.
        ``"mmcv"`` (default) is DCNv3/DCNv4's: their CUDA backward is gated by
        ``h_im > -1 && w_im > -1 && h_im < H && w_im < W``
        (``dcnv4_col2im_cuda.cuh``), so such a sample has offset gradient 0.
        ``"torchvision"`` gives the inward one-sided derivative there.

    Returns
    -------
    DCNv3Gradients
        ``(input, offset, mask)`` in the shapes of the inputs; dtype as for
        :func:`dcnv3`.  ``offset``'s gradient includes the factor
        ``offset_scale``.
    """
    code = convention_code(convention)
    module = get_backend(backend)
    geom = check_dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                       pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                       remove_center)
    check_grad_output(grad_output, geom)
    dtype, (go, x, off, msk) = _prepare(
        module, (grad_output, input, *_dcnv3_views(geom, offset, mask)),
        (grad_output, input, offset, mask))
    gi, goff, gm = module.backward(go, x, off, msk, geom, dtype, code)
    return DCNv3Gradients(gi, goff.reshape(np.shape(offset)), gm.reshape(np.shape(mask)))


# ------------------------------------------------------------------ DCNv4
def dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h=1, stride_w=1, pad_h=0, pad_w=0,
          dilation_h=1, dilation_w=1, group=1, group_channels=None, offset_scale=1.0,
          remove_center=False, softmax=False, *, backend="auto"):
    """DCNv4 (OpenGVLab/DCNv4): DCNv3's function with offsets and weights packed in one tensor.

    Arguments as in ``DCNv4Function`` (``DCNv4_op/DCNv4/functions/dcnv4_func.py``)
    without its tuning knobs (``im2col_step``, ``d_stride``, ``block_thread``),
    which do not change the result.

    Parameters
    ----------
    input : array, shape (N, H, W, group*group_channels)
    offset_mask : array, shape (N, H_out, W_out, C_pad), C_pad >= 3*group*K
        Per group ``g``, from channel ``g*3K``: the 2K offsets in DCNv3's order
        ((dx, dy) pairs, x-major taps), then the K weights, raw (unbounded).
        Channels ``3*group*K .. C_pad`` are padding and are never read (DCNv4's
        module pads to ``ceil(3*group*K / 8) * 8``,
        :func:`refdcn.dcnv34.geometry.packed_channels`).
    kernel_h ... remove_center, backend
        As in :func:`dcnv3`.
    softmax : bool
        Apply a softmax over the K weights of each group first (the kernel's
        ``softmax`` flag; DCNv4 itself runs without it).

    Returns
    -------
    output : ndarray, shape (N, H_out, W_out, group*group_channels)

    Notes
    -----
    ``group_channels`` need not be a multiple of 16: DCNv4's *module* requires
    that (``dcnv4.py``: ``_d_per_group % 16 == 0``) for its CUDA kernels' tiling;
    the function is defined for any D, and refdcn neither enforces nor warns
    about it.  Porters targeting DCNv4's kernels should keep D % 16 == 0.
    """
    module = get_backend(backend)
    geom = check_dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                       pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                       remove_center)
    off, msk = _dcnv4_views(geom, offset_mask)
    if softmax:
        msk = tap_softmax(msk)
    dtype, (x, off, msk) = _prepare(module, (input, off, msk), (input, offset_mask))
    return module.forward(x, off, msk, geom, dtype)


def dcnv4_backward(grad_output, input, offset_mask, kernel_h, kernel_w, stride_h=1, stride_w=1,
                   pad_h=0, pad_w=0, dilation_h=1, dilation_w=1, group=1, group_channels=None,
                   offset_scale=1.0, remove_center=False, softmax=False, *, backend="auto",
                   convention="mmcv"):
    """Gradients of :func:`dcnv4` with respect to ``input`` and ``offset_mask``.

    Parameters as in :func:`dcnv4`; ``convention`` as in :func:`dcnv3_backward`
    (default ``"mmcv"``, DCNv4's rule).

    Returns
    -------
    DCNv4Gradients
        ``(input, offset_mask)``, shaped like the inputs, packed like
        ``offset_mask``; the padding channels get gradient 0 (as DCNv4's
        ``grad_offset = zeros_like(p_offset)``).
    """
    code = convention_code(convention)
    module = get_backend(backend)
    geom = check_dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                       pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                       remove_center)
    check_grad_output(grad_output, geom)
    off, raw = _dcnv4_views(geom, offset_mask)
    msk = tap_softmax(raw) if softmax else raw
    dtype, (go, x, off, msk32) = _prepare(module, (grad_output, input, off, msk),
                                          (grad_output, input, offset_mask))
    gi, goff, gm = module.backward(go, x, off, msk32, geom, dtype, code)
    if softmax:
        gm = tap_softmax_backward(msk, gm.astype(np.float64)).astype(dtype)
    packed = np.zeros(np.shape(offset_mask), dtype)
    k, g = geom.taps, geom.group
    per = packed[..., :3 * g * k].reshape(goff.shape[:4] + (3 * k,))
    per[..., :2 * k] = goff.reshape(goff.shape[:4] + (2 * k,))
    per[..., 2 * k:] = gm
    packed[..., :3 * g * k] = per.reshape(packed.shape[:3] + (3 * g * k,))
    return DCNv4Gradients(gi, packed)
