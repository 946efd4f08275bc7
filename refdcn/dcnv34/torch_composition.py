"""An independent oracle: DCNv3 as a composition of PyTorch ``grid_sample`` calls.

InternImage ships, besides its CUDA kernels, a pure-PyTorch version of the
operator, ``dcnv3_core_pytorch`` (``classification/ops_dcnv3/functions/
dcnv3_func.py``), which DCNv4's own backward test uses as its reference.  This
module rewrites that *composition* from its description (it shares no code
with refdcn's kernels or with InternImage):

1. zero-pad the channels-last input by ``pad_h`` rows and ``pad_w`` columns;
2. reference points: the kernel centre of every output pixel in the padded
   image, ``centre + o*stride`` (+0.5 for pixel-centre coordinates);
3. the dilation grid: tap offsets from the centre, ``tap*dilation - centre``,
   in x-major order (the centre dropped for ``remove_center``);
4. sampling locations ``ref + (grid + offset) * offset_scale``, normalised to
   ``[-1, 1]`` by the padded size (``align_corners=False``);
5. ``torch.nn.functional.grid_sample(..., mode="bilinear",
   padding_mode="zeros", align_corners=False)`` per (image, group), then the
   weighted sum over the taps.

Its border is therefore "zero padding plus zero outside", the same function as
torchvision's sampler (equal up to the rounding of the normalisation), and its
gradients come from torch's autograd.  Differences from InternImage's file,
on purpose: it pads the height by ``pad_h`` (InternImage passes
``[0, 0, pad_h, pad_h, pad_w, pad_w]`` to ``F.pad``, which pads the *width* by
``pad_h`` and the height by ``pad_w``: the same only when ``pad_h == pad_w``,
as in every InternImage model), and it computes in whatever dtype it is given
(float64 for the tests).

Needs torch (``pip install torch``); imported lazily.
"""

import numpy as np

from .geometry import tap_order

__all__ = ["dcnv3_core_pytorch", "dcnv4_core_pytorch", "run_dcnv3", "run_dcnv4"]


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"the grid_sample composition needs torch ({exc}); "
                          f"pip install torch") from None
    return torch


def dcnv3_core_pytorch(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                       pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                       remove_center):
    """DCNv3 forward on torch tensors by ``grid_sample`` (differentiable by autograd).

    Same arguments, layouts and result as :func:`refdcn.dcnv3` (torch tensors
    in, a torch tensor (N, H_out, W_out, group*group_channels) out).
    """
    torch = _torch()
    import torch.nn.functional as F
    n, h, w, _ = input.shape
    padded = F.pad(input, [0, 0, pad_w, pad_w, pad_h, pad_h])     # (C), W, H from the end
    hp, wp = h + 2 * pad_h, w + 2 * pad_w
    ho, wo = offset.shape[1], offset.shape[2]
    ch, cw = (dilation_h * (kernel_h - 1)) // 2, (dilation_w * (kernel_w - 1)) // 2
    taps = tap_order(kernel_h, kernel_w, bool(remove_center))
    k = len(taps)
    opts = dict(dtype=input.dtype, device=input.device)
    ref_y = (ch + 0.5 + torch.arange(ho, **opts) * stride_h).view(1, ho, 1, 1, 1)
    ref_x = (cw + 0.5 + torch.arange(wo, **opts) * stride_w).view(1, 1, wo, 1, 1)
    grid_y = torch.tensor([i * dilation_h - ch for i, _ in taps], **opts).view(1, 1, 1, 1, k)
    grid_x = torch.tensor([j * dilation_w - cw for _, j in taps], **opts).view(1, 1, 1, 1, k)
    off = offset.reshape(n, ho, wo, group, k, 2)
    loc_x = (ref_x + (grid_x + off[..., 0]) * offset_scale) / wp       # (N, Ho, Wo, G, K) in [0, 1]
    loc_y = (ref_y + (grid_y + off[..., 1]) * offset_scale) / hp
    grid = torch.stack([2 * loc_x - 1, 2 * loc_y - 1], dim=-1)          # grid_sample wants (x, y)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * group, ho * wo, k, 2)
    value = padded.reshape(n, hp * wp, group, group_channels).permute(0, 2, 3, 1)
    value = value.reshape(n * group, group_channels, hp, wp)
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)                       # (N*G, D, Ho*Wo, K)
    weights = mask.reshape(n, ho * wo, group, k).permute(0, 2, 1, 3).reshape(
        n * group, 1, ho * wo, k)
    out = (sampled * weights).sum(-1)                                   # (N*G, D, Ho*Wo)
    return out.reshape(n, group * group_channels, ho * wo).transpose(1, 2).reshape(
        n, ho, wo, group * group_channels)


def dcnv4_core_pytorch(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                       pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                       remove_center):
    """DCNv4 forward on torch tensors: unpack ``offset_mask`` and call :func:`dcnv3_core_pytorch`."""
    n, ho, wo, _ = offset_mask.shape
    k = kernel_h * kernel_w - int(bool(remove_center))
    per = offset_mask[..., :3 * group * k].reshape(n, ho, wo, group, 3 * k)
    offset = per[..., :2 * k].reshape(n, ho, wo, group * 2 * k)
    mask = per[..., 2 * k:].reshape(n, ho, wo, group * k)
    return dcnv3_core_pytorch(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                              pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                              remove_center)


def _run(function, arrays, attrs, grad_output):
    torch = _torch()
    tensors = [torch.tensor(np.asarray(a), requires_grad=grad_output is not None)
               for a in arrays]
    out = function(*tensors, **attrs)
    if grad_output is None:
        return out.detach().numpy()
    out.backward(torch.tensor(np.asarray(grad_output), dtype=out.dtype))
    return out.detach().numpy(), [t.grad.numpy() for t in tensors]


def run_dcnv3(input, offset, mask, grad_output=None, **attrs):
    """NumPy in, NumPy out, computed in the arrays' dtype (float64 for an oracle): the
    output, and with ``grad_output`` the autograd gradients ``[grad_input, grad_offset,
    grad_mask]``.  ``attrs``: the keyword arguments of :func:`dcnv3_core_pytorch` after
    ``mask``."""
    return _run(dcnv3_core_pytorch, (input, offset, mask), attrs, grad_output)


def run_dcnv4(input, offset_mask, grad_output=None, **attrs):
    """As :func:`run_dcnv3` for DCNv4: gradients ``[grad_input, grad_offset_mask]``."""
    return _run(dcnv4_core_pytorch, (input, offset_mask), attrs, grad_output)
