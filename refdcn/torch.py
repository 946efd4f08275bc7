"""PyTorch bridge: refdcn's kernels as an autograd function and a drop-in module.

Needs PyTorch (``pip install 'refdcn[torch]'``); importing :mod:`refdcn`
never imports torch, only ``import refdcn.torch`` does.

* :func:`deform_conv2d` has the signature of ``torchvision.ops.deform_conv2d``
  (``torchvision/ops/deform_conv.py``) plus two keyword-only arguments,
  ``backend`` and ``convention``; it is differentiable with respect to all
  five tensors (``input``, ``offset``, ``weight``, ``bias``, ``mask``) through
  refdcn's hand-written backward (:func:`refdcn.deform_conv2d_backward`).
* :class:`DeformConv2d` is a drop-in for ``torchvision.ops.DeformConv2d``:
  same constructor, defaults, parameter names and initialisation, and
  ``forward(input, offset, mask=None)``.

How tensors travel
------------------
CPU tensors are handed to the CPU backends as NumPy views
(``tensor.detach().numpy()``: no copy for float32/float64 tensors; the
backends copy only what is not C-contiguous or not in the compute dtype) and
the results come back as ``torch.from_numpy`` views (no copy).  CUDA tensors
go to the ``"cuda"`` backend through ``__cuda_array_interface__`` (no host
round trip) and its Numba device arrays come back the same way
(``torch.as_tensor(..., device=...)``).  ``backend="auto"`` means the
fastest CPU backend for CPU tensors and ``"cuda"`` for CUDA tensors.

dtypes: results have the dtype of ``input`` (as torchvision's); float16 and
bfloat16 are computed in float32 (bfloat16 is converted first, NumPy has
no bfloat16), float64 in float64 (the ``"reference"`` backend computes
everything in float64).  Each gradient has the dtype of its tensor.

Compilation: the function is a Python :class:`torch.autograd.Function` whose
body calls NumPy/Numba, so ``torch.compile`` cannot trace into it: Dynamo
breaks the graph around the call, runs it eagerly and compiles the rest,
with the same results (``tests/test_torch.py`` checks both the values and
the graph break).  ``torch.jit.script`` cannot compile it (a Python autograd
function is not TorchScript) and ``torch.jit.trace`` is refused with a
RuntimeError (a trace would record the NumPy result as a constant).
Higher-order gradients are not available (the backward is not itself
differentiable: ``once_differentiable``).

>>> import torch, refdcn.torch as rt                       # doctest: +SKIP
>>> layer = rt.DeformConv2d(4, 8, kernel_size=3, padding=1)  # doctest: +SKIP
>>> x = torch.randn(2, 4, 16, 16)                            # doctest: +SKIP
>>> offset = torch.zeros(2, 18, 16, 16, requires_grad=True)  # doctest: +SKIP
>>> layer(x, offset).sum().backward()                        # doctest: +SKIP
"""

import math

try:
    import torch
except ImportError as exc:                       # pragma: no cover - needs torch absent
    raise ImportError("refdcn.torch needs PyTorch: pip install 'refdcn[torch]'") from exc
from torch.autograd.function import once_differentiable

from . import api, backends
from .geometry import as_pair

__all__ = ["deform_conv2d", "DeformConv2d", "DeformConv2dFunction"]


def _backend_for(backend, tensor):
    """The backend name for tensors on ``tensor.device`` (``"auto"`` resolved by device)."""
    on_cuda = tensor.device.type == "cuda"
    if backend == "auto":
        return "cuda" if on_cuda else backends.fastest_cpu()
    if on_cuda and backends.capabilities(backend).device != "cuda":
        raise ValueError(f"backend {backend!r} runs on the CPU but input is on {tensor.device}; "
                         f"use backend='cuda' or 'auto', or move the tensors with .cpu()")
    return backend


def _as_array(tensor, device):
    """What the refdcn API receives for ``tensor``: a NumPy view (CPU) or the tensor (CUDA)."""
    if tensor is None:
        return None
    tensor = tensor.detach()
    if tensor.device != device:
        raise ValueError(f"all tensors must be on one device; got {tensor.device} "
                         f"and {device}")
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    if tensor.device.type == "cuda":
        return tensor                   # read through __cuda_array_interface__
    return tensor.numpy()


def _as_tensor(array, like):
    """A result of the refdcn API as a tensor with the device and dtype of ``like``."""
    if array is None:
        return None
    if like.device.type == "cuda":
        result = torch.as_tensor(array, device=like.device)
    else:
        result = torch.from_numpy(array)
    return result.to(like.dtype)


class DeformConv2dFunction(torch.autograd.Function):
    """The autograd function behind :func:`deform_conv2d` (call that instead).

    ``forward(ctx, input, offset, weight, bias, mask, stride, padding,
    dilation, backend, convention)``; the backward returns the five gradients
    from :func:`refdcn.deform_conv2d_backward` (only those requested).
    """

    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, stride, padding, dilation, backend,
                convention):
        arrays = [_as_array(t, input.device) for t in (input, offset, weight, bias, mask)]
        out = api.deform_conv2d(arrays[0], arrays[1], arrays[2], arrays[3], stride, padding,
                                dilation, arrays[4], backend=backend)
        ctx.save_for_backward(input, offset, weight, bias, mask)
        ctx.settings = (stride, padding, dilation, backend, convention)
        return _as_tensor(out, input)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        tensors = ctx.saved_tensors
        stride, padding, dilation, backend, convention = ctx.settings
        device = tensors[0].device
        arrays = [_as_array(t, device) for t in tensors]
        grads = api.deform_conv2d_backward(
            _as_array(grad_output.contiguous(), device), arrays[0], arrays[1], arrays[2],
            arrays[3], stride, padding, dilation, arrays[4], backend=backend,
            convention=convention)
        # refdcn's Gradients are (input, offset, mask, weight, bias); the function's
        # arguments are (input, offset, weight, bias, mask)
        ordered = (grads.input, grads.offset, grads.weight, grads.bias, grads.mask)
        result = [_as_tensor(g, t) if need and t is not None else None
                  for g, t, need in zip(ordered, tensors, ctx.needs_input_grad)]
        return (*result, None, None, None, None, None)


@torch.compiler.disable
def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  *, backend="auto", convention="torchvision"):
    r"""Deformable convolution on tensors, differentiable, torchvision's signature.

    Computes :func:`refdcn.deform_conv2d` (DCNv1; DCNv2 with ``mask``) and,
    under autograd, its five gradients with :func:`refdcn.deform_conv2d_backward`.

    Parameters
    ----------
    input : Tensor, shape (N, C_in, H, W)
    offset : Tensor, shape (N, 2*offset_groups*kh*kw, H_out, W_out)
        Interleaved (dy, dx) pairs, torchvision's layout (see
        :func:`refdcn.deform_conv2d`).
    weight : Tensor, shape (C_out, C_in // groups, kh, kw)
    bias : Tensor, shape (C_out,), optional
    stride, padding, dilation : int or (int, int)
    mask : Tensor, shape (N, offset_groups*kh*kw, H_out, W_out), optional
        DCNv2 modulation, used raw (no sigmoid).
    backend : str
        ``"auto"``: the fastest CPU backend for CPU tensors, ``"cuda"`` for
        CUDA tensors; or any name of :func:`refdcn.backends.available`.
    convention : {"torchvision", "mmcv"}
        Offset-gradient rule for samples exactly on ``y = -1`` / ``x = -1``
        (see :func:`refdcn.deform_conv2d_backward`).

    Returns
    -------
    Tensor, shape (N, C_out, H_out, W_out)
        On ``input``'s device, in ``input``'s dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`refdcn.deform_conv2d` for bad shapes and arguments; also for
        tensors on different devices, or CUDA tensors with a CPU backend.
    refdcn.backends.BackendUnavailable
        If ``backend`` does not work here.

    Notes
    -----
    Matches ``torchvision.ops.deform_conv2d`` (``torchvision/ops/deform_conv.py``
    and ``torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp``) in the forward
    and all five gradients (``tests/test_torch.py``).
    """
    if torch.jit.is_tracing():
        raise RuntimeError("refdcn.torch.deform_conv2d cannot be traced by torch.jit.trace: it "
                           "computes in NumPy, so a trace would record its result as a constant; "
                           "use torch.compile (which runs it eagerly) or call it unscripted")
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor; got {type(input).__name__} "
                        f"(use refdcn.deform_conv2d for NumPy arrays)")
    for name, t in (("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None; got {type(t).__name__}")
    api.convention_code(convention)              # validates the name early
    backend = _backend_for(backend, input)
    return DeformConv2dFunction.apply(input, offset, weight, bias, mask, stride, padding,
                                      dilation, backend, convention)


class DeformConv2d(torch.nn.Module):
    """Drop-in for ``torchvision.ops.DeformConv2d``: offsets (and mask) passed to ``forward``.

    Parameters
    ----------
    in_channels, out_channels : int
        Both divisible by ``groups``.
    kernel_size : int or (int, int)
    stride, padding, dilation : int or (int, int)
        Defaults 1, 0, 1 (torchvision's).
    groups : int
        Convolution groups (1).
    bias : bool
        True (torchvision's default).
    backend, convention : str, keyword-only
        As in :func:`deform_conv2d`.

    Attributes
    ----------
    weight : Parameter, shape (out_channels, in_channels // groups, kh, kw)
        ``kaiming_uniform_(a=sqrt(5))``, as torchvision (so the same seed gives
        the same weights as ``torchvision.ops.DeformConv2d``).
    bias : Parameter, shape (out_channels,), or None
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    Shapes: ``forward(input (N, C_in, H, W), offset (N, 2*offset_groups*kh*kw,
    H_out, W_out), mask=None)`` -> (N, C_out, H_out, W_out).

    Raises
    ------
    ValueError
        If ``in_channels`` or ``out_channels`` is not divisible by ``groups``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, backend="auto", convention="torchvision"):
        super().__init__()
        if groups < 1 or in_channels % groups:
            raise ValueError(f"in_channels must be divisible by groups; got in_channels="
                             f"{in_channels}, groups={groups}")
        if out_channels % groups:
            raise ValueError(f"out_channels must be divisible by groups; got out_channels="
                             f"{out_channels}, groups={groups}")
        api.convention_code(convention)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        self.dilation = as_pair(dilation, "dilation", 1)
        self.backend, self.convention = backend, convention
        self.weight = torch.nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                                     *self.kernel_size))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        """torchvision's initialisation (that of ``torch.nn.Conv2d``)."""
        torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input, offset, mask=None):
        """Deformable convolution of ``input`` at ``offset`` (and ``mask``: DCNv2)."""
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask, backend=self.backend,
                             convention=self.convention)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text
