"""Adapters for the DCN ecosystem: PaddlePaddle, OpenVINO, MindSpore and Apache TVM.

Each runs the real library on a conformance case (layouts converted here; the
semantics measured in ``peers.md``).  A case the library cannot express gets
the **unsupported** status with the reason (:meth:`Implementation.unsupported`),
never an ERROR.

=========================  ==========================================================
``paddle``                 ``paddle.vision.ops.deform_conv2d``, gradients by autograd
                           (mmcv offset-gradient convention: ``DmcnGetCoordinateWeight``)
``openvino``               DeformableConvolution-8, ``bilinear_interpolation_pad=true``
``openvino-opset8-nopad``  DeformableConvolution-8, ``bilinear_interpolation_pad=false``
                           (the MSRA DCNv1 border rule)
``openvino-opset1``        DeformableConvolution-1 (MSRA DCNv1 border rule; no mask)
``mindspore``              ``mindspore.ops.deformable_conv2d`` on CPU, float32, gradients by
                           ``mindspore.vjp`` (planar dx / dy / mask offsets)
``tvm``                    ``tvm.topi.testing.deformable_conv2d_nchw_python`` (DCNv1)
``tvm-compiled``           ``tvm.topi.nn.deformable_conv2d_nchw`` compiled for llvm
=========================  ==========================================================
"""

import numpy as np

from .adapters import AdapterUnavailable, Implementation, one_line

__all__ = ["Paddle", "OpenVino", "MindSpore", "Tvm", "TvmCompiled", "PEERS"]


def _require(module, install):
    import importlib
    try:
        return importlib.import_module(module)
    except Exception as exc:           # noqa: BLE001 - ImportError or a broken install
        raise AdapterUnavailable(f"{module} is not usable here ({one_line(exc)}); install it "
                                 f"with: {install}") from None


def _attributes(case):
    kh, kw = case.weight.shape[2:]
    groups = case.input.shape[1] // case.weight.shape[1]
    offset_groups = case.offset.shape[1] // (2 * kh * kw)
    return int(kh), int(kw), int(groups), int(offset_groups)


# ---------------------------------------------------------------- PaddlePaddle
class Paddle(Implementation):
    """``paddle.vision.ops.deform_conv2d`` (CPU), torchvision's layout; gradients by autograd.

    Paddle refuses ``C_out % deformable_groups != 0`` (an argument check, not a
    limit of the math): the adapter adds all-zero filters to every conv group
    until the check passes and drops their outputs again, an exact identity.
    Its offset gradient is 0 on y = -1 (``DmcnGetCoordinateWeight``:
    ``argmax_h <= -1``): the mmcv convention.
    """
    name = "paddle"
    native_convention = "mmcv"
    has_backward = True

    def __init__(self):
        self.paddle = _require("paddle", "pip install paddlepaddle")
        self.paddle.set_device("cpu")
        self.description = f"PaddlePaddle {self.paddle.__version__} " \
                           f"paddle.vision.ops.deform_conv2d (CPU)"

    def _padded(self, case):
        kh, kw, groups, dg = _attributes(case)
        out_per_group = case.weight.shape[0] // groups
        extra = 0
        while (groups * (out_per_group + extra)) % dg:
            extra += 1
        keep = np.concatenate([np.arange(g * (out_per_group + extra),
                                         g * (out_per_group + extra) + out_per_group)
                               for g in range(groups)])
        w = case.weight.reshape((groups, out_per_group) + case.weight.shape[1:])
        w = np.concatenate([w, np.zeros((groups, extra) + w.shape[2:], w.dtype)], axis=1)
        return w.reshape((-1,) + case.weight.shape[1:]), keep, groups, dg

    def _run(self, case, grad_output=None):
        p = self.paddle
        weight, keep, groups, dg = self._padded(case)
        n_out = weight.shape[0]
        tensor = lambda a: None if a is None else p.to_tensor(np.ascontiguousarray(a),
                                                              stop_gradient=grad_output is None)
        bias = None
        if case.bias is not None:
            bias = np.zeros(n_out, case.bias.dtype)
            bias[keep] = case.bias
        x, off, w, b, m = (tensor(a) for a in (case.input, case.offset, weight, bias, case.mask))
        out = p.vision.ops.deform_conv2d(x, off, w, b, stride=list(case.stride),
                                         padding=list(case.padding),
                                         dilation=list(case.dilation), deformable_groups=dg,
                                         groups=groups, mask=m)
        if grad_output is None:
            return out.numpy()[:, keep]
        g = np.zeros((out.shape[0], n_out) + tuple(out.shape[2:]), grad_output.dtype)
        g[:, keep] = grad_output
        out.backward(p.to_tensor(g))
        grad = lambda t: None if t is None or t.grad is None else t.grad.numpy()
        return {"input": grad(x), "offset": grad(off), "mask": grad(m),
                "weight": None if grad(w) is None else grad(w)[keep],
                "bias": None if b is None else grad(b)[keep]}

    def forward(self, case):
        return self._run(case)

    def backward(self, case, convention):
        return self._run(case, case.grad_output)


# ---------------------------------------------------------------- OpenVINO
class OpenVino(Implementation):
    """OpenVINO's DeformableConvolution (one-node model compiled for "CPU"; forward only).

    ``opset=8, pad=True``: ``bilinear_interpolation_pad=true``, torchvision's
    border rule; ``pad=False`` (opset 8's default) and ``opset=1``: the MSRA
    DCNv1 rule.  Offsets are torchvision's interleaved (dy, dx)
    (intel_cpu ``def_conv.cpp``).  The CPU plugin computes in float32 only.
    """
    has_backward = False

    def __init__(self, opset=8, pad=True):
        self.ov = _require("openvino", "pip install openvino")
        self.opset, self.pad = opset, pad
        self.ops = _require(f"openvino.opset{opset}", "pip install openvino")
        self.core = self.ov.Core()
        self.name = "openvino" if (opset, pad) == (8, True) else \
            ("openvino-opset1" if opset == 1 else "openvino-opset8-nopad")
        self.description = (f"OpenVINO {self.ov.__version__} DeformableConvolution-{opset}"
                            + (f" bilinear_interpolation_pad={str(pad).lower()}"
                               if opset == 8 else "") + ", CPU plugin")
        self._cache = {}

    def unsupported(self, case):
        if self.opset == 1 and case.mask is not None:
            return "DeformableConvolution-1 has no mask (DCNv2)"
        return ""

    def _compiled(self, case):
        key = (case.input.shape, case.offset.shape, case.weight.shape, case.stride,
               case.padding, case.dilation, case.mask is not None, case.bias is not None,
               case.input.dtype.str)
        if key in self._cache:
            return self._cache[key]
        kh, kw, groups, dg = _attributes(case)
        et = self.ov.Type.f64 if case.input.dtype == np.float64 else self.ov.Type.f32
        params = [self.ops.parameter(list(a.shape), et, name=n) for n, a in
                  (("x", case.input), ("offset", case.offset), ("weight", case.weight))]
        if case.mask is not None:
            params.append(self.ops.parameter(list(case.mask.shape), et, name="mask"))
        pads = [int(p) for p in case.padding]
        common = dict(strides=[int(s) for s in case.stride], pads_begin=pads, pads_end=pads,
                      dilations=[int(d) for d in case.dilation], group=groups,
                      deformable_group=dg)
        if self.opset == 1:
            node = self.ops.deformable_convolution(*params[:3], **common)
        else:
            node = self.ops.deformable_convolution(
                *params[:3], mask=params[3] if case.mask is not None else None,
                bilinear_interpolation_pad=self.pad, **common)
        if case.bias is not None:        # in the graph: OpenVINO adds in its own precision
            bias = self.ops.parameter([1, case.bias.shape[0], 1, 1], et, name="bias")
            params.append(bias)
            node = self.ops.add(node, bias)
        model = self.ov.Model([node], params, "deform_conv")
        compiled = self.core.compile_model(model, "CPU")
        self._cache[key] = compiled
        return compiled

    def forward(self, case):
        compiled = self._compiled(case)
        feeds = [case.input, case.offset, case.weight] + \
            ([case.mask] if case.mask is not None else []) + \
            ([case.bias.reshape(1, -1, 1, 1)] if case.bias is not None else [])
        return np.asarray(compiled([np.ascontiguousarray(a) for a in feeds])[0])


# ---------------------------------------------------------------- MindSpore
class MindSpore(Implementation):
    """``mindspore.ops.deformable_conv2d`` on CPU (PyNative), float32; gradients by
    ``mindspore.vjp``.

    MindSpore takes one ``offsets`` tensor (N, 3*D*kh*kw, H_out, W_out): all
    dx, then all dy, then the mask (``deformable_offsets_cpu_kernel.cc``);
    DCNv2 only, so DCNv1 cases get a mask of ones.  Its offset gradient takes
    the inward derivative at -1: the torchvision convention.
    """
    name = "mindspore"
    has_backward = True

    def __init__(self):
        self.ms = _require("mindspore", "pip install mindspore")
        self.ms.set_context(mode=self.ms.PYNATIVE_MODE, device_target="CPU")
        self.description = f"MindSpore {self.ms.__version__} ops.deformable_conv2d (CPU)"

    def unsupported(self, case):
        if case.input.dtype != np.float32:
            return "MindSpore's deformable_conv2d computes in float16/float32 only " \
                   "(use --dtype float32)"
        return ""

    def _pack(self, case):
        kh, kw, groups, dg = _attributes(case)
        n, _, ho, wo = case.offset.shape
        pairs = case.offset.reshape(n, dg * kh * kw, 2, ho, wo)
        mask = np.ones((n, dg * kh * kw, ho, wo), case.offset.dtype) if case.mask is None \
            else case.mask
        return np.concatenate([pairs[:, :, 1], pairs[:, :, 0], mask], axis=1)

    def _unpack(self, grad, case):
        kh, kw, groups, dg = _attributes(case)
        dk = dg * kh * kw
        dx, dy, dm = grad[:, :dk], grad[:, dk:2 * dk], grad[:, 2 * dk:]
        offset = np.stack([dy, dx], axis=2).reshape(case.offset.shape)
        return offset, (None if case.mask is None else dm)

    def _function(self, case):
        ms = self.ms
        kh, kw, groups, dg = _attributes(case)
        ph, pw = (int(p) for p in case.padding)

        def f(x, offsets, weight, *bias):
            return ms.ops.deformable_conv2d(
                x, weight, offsets, (kh, kw), (1, 1) + tuple(int(s) for s in case.stride),
                (ph, ph, pw, pw), bias=bias[0] if bias else None,
                dilations=(1, 1) + tuple(int(d) for d in case.dilation), groups=groups,
                deformable_groups=dg, modulated=True)
        args = [ms.Tensor(np.ascontiguousarray(a)) for a in
                (case.input, self._pack(case), case.weight)]
        if case.bias is not None:
            args.append(ms.Tensor(np.ascontiguousarray(case.bias)))
        return f, args

    def forward(self, case):
        f, args = self._function(case)
        return f(*args).asnumpy()

    def backward(self, case, convention):
        f, args = self._function(case)
        _, vjp = self.ms.vjp(f, *args)
        grads = [g.asnumpy() for g in vjp(self.ms.Tensor(np.ascontiguousarray(case.grad_output)))]
        offset, mask = self._unpack(grads[1], case)
        return {"input": grads[0], "offset": offset, "mask": mask, "weight": grads[2],
                "bias": grads[3] if case.bias is not None else None}


# ---------------------------------------------------------------- Apache TVM
class Tvm(Implementation):
    """``tvm.topi.testing.deformable_conv2d_nchw_python``: TVM's NumPy reference (DCNv1).

    No mask and no conv groups (unsupported); the bias is added by the
    adapter.  TVM's border rule drops samples with y < 0 or x < 0 (see
    :func:`refdcn.verify.variants.tvm_points`).
    """
    name = "tvm"
    has_backward = False

    def __init__(self):
        tvm = _require("tvm", "pip install apache-tvm scipy")
        self.ref = _require("tvm.topi.testing", "pip install apache-tvm scipy") \
            .deformable_conv2d_nchw_python
        self.description = f"Apache TVM {tvm.__version__} topi.testing." \
                           f"deformable_conv2d_nchw_python"

    def unsupported(self, case):
        kh, kw, groups, dg = _attributes(case)
        if case.mask is not None:
            return "TVM's deformable_conv2d has no mask (DCNv2)"
        if groups != 1:
            return "TVM's deformable_conv2d has no conv groups"
        if case.input.shape[0] == 0:
            return "TVM's reference cannot run an empty batch"
        return ""

    def forward(self, case):
        kh, kw, groups, dg = _attributes(case)
        out = self.ref(case.input, case.offset, case.weight, tuple(case.stride),
                       tuple(case.padding), tuple(case.dilation), dg, groups)
        if case.bias is not None:
            out = out + case.bias[None, :, None, None]
        return np.asarray(out, dtype=case.input.dtype)


class TvmCompiled(Tvm):
    """``tvm.topi.nn.deformable_conv2d_nchw`` compiled for ``llvm`` (default schedule, one
    module per case shape); the same limits and border rule as :class:`Tvm`."""
    name = "tvm-compiled"

    def __init__(self):
        self.tvm = _require("tvm", "pip install apache-tvm scipy")
        self.te = _require("tvm.te", "pip install apache-tvm scipy")
        self.topi = _require("tvm.topi", "pip install apache-tvm scipy")
        self.description = f"Apache TVM {self.tvm.__version__} topi.nn.deformable_conv2d_nchw " \
                           f"compiled for llvm"
        self._cache = {}

    def forward(self, case):
        tvm, te = self.tvm, self.te
        kh, kw, groups, dg = _attributes(case)
        dtype = str(case.input.dtype)
        key = (case.input.shape, case.offset.shape, case.weight.shape, case.stride,
               case.padding, case.dilation, dtype)
        if key not in self._cache:
            data = te.placeholder(case.input.shape, name="data", dtype=dtype)
            off = te.placeholder(case.offset.shape, name="offset", dtype=dtype)
            ker = te.placeholder(case.weight.shape, name="kernel", dtype=dtype)
            out = self.topi.nn.deformable_conv2d_nchw(
                data, off, ker, tuple(int(v) for v in case.stride),
                tuple(int(v) for v in case.padding), tuple(int(v) for v in case.dilation), dg,
                groups, dtype)
            mod = tvm.IRModule({"main": te.create_prim_func([data, off, ker, out])})
            self._cache[key] = (tvm.build(mod, target="llvm"),
                                tuple(int(v) for v in out.shape))
        lib, out_shape = self._cache[key]
        dev = tvm.cpu()
        array = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
        args = [array(np.ascontiguousarray(a), dev) for a in
                (case.input, case.offset, case.weight)]
        args.append(array(np.zeros(out_shape, case.input.dtype), dev))
        lib(*args)
        out = args[3].numpy()
        if case.bias is not None:
            out = out + case.bias.astype(out.dtype)[None, :, None, None]
        return out


#: name -> constructor, for :func:`refdcn.verify.adapters.resolve`.
PEERS = {
    "paddle": Paddle,
    "openvino": lambda: OpenVino(8, True),
    "openvino-opset8-nopad": lambda: OpenVino(8, False),
    "openvino-opset1": lambda: OpenVino(1),
    "mindspore": MindSpore,
    "tvm": Tvm,
    "tvm-compiled": TvmCompiled,
}
