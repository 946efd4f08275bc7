"""Adapters: run another implementation of deformable convolution on a conformance case.

Every adapter is an :class:`Implementation`.  The verifier hands it a
:class:`refdcn.testing.Case` whose arrays are already in the dtype under test
and gets NumPy arrays back:

* ``forward(case) -> output`` of shape (N, C_out, H_out, W_out);
* ``backward(case, convention) -> {"input", "offset", "mask", "weight", "bias"}``
  (only if ``has_backward``; ``convention`` matters only to implementations
  that can compute either, i.e. refdcn's own backends).

Built-in adapters (see :func:`resolve`):

========================  ====================================================
``torchvision``           ``torchvision.ops.deform_conv2d``; gradients by autograd
``onnxruntime``           a one-node ONNX ``DeformConv`` model run by ONNX Runtime
``onnx-reference``        the same model run by ``onnx.reference.ReferenceEvaluator``
``mmcv``                  ``mmcv.ops.modulated_deform_conv2d``; gradients by autograd
``paddle``, ``openvino``, ``mindspore``, ``tvm`` (and variants): :mod:`refdcn.verify.peers`
``refdcn:NAME`` / NAME    refdcn's backend NAME (``reference``, ``numpy``, ...)
``package.module:func``   any callable with torchvision's signature on NumPy arrays
========================  ====================================================

The user callable has the signature of ``torchvision.ops.deform_conv2d`` on
NumPy arrays::

    f(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
      dilation=(1, 1), mask=None) -> output

and the optional gradient callable (``--backward``)::

    g(grad_output, input, offset, weight, bias, stride, padding, dilation, mask)
        -> (grad_input, grad_offset, grad_mask, grad_weight, grad_bias)
           or {"input": ..., "offset": ..., "mask": ..., "weight": ..., "bias": ...}
"""

import contextlib
import importlib
import inspect
import os
import sys
import warnings

import numpy as np

from .. import api, backends

__all__ = ["Implementation", "AdapterUnavailable", "ImplementationError", "one_line", "quiet", "is_refdcn_backend", "resolve", "BUILTIN", "to_numpy",
           "onnx_model", "GRADIENT_KEYS"]

#: Keys of a gradient mapping, in the order of a gradient sequence.
GRADIENT_KEYS = ("input", "offset", "mask", "weight", "bias")

#: Built-in adapter names (refdcn backends are added by :func:`resolve`; the ecosystem
#: adapters live in :mod:`refdcn.verify.peers`).
BUILTIN = ("torchvision", "onnxruntime", "onnx-reference", "mmcv", "paddle", "openvino",
           "openvino-opset8-nopad", "openvino-opset1", "mindspore", "tvm", "tvm-compiled")

FORWARD_SIGNATURE = ("f(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), "
                     "dilation=(1, 1), mask=None) -> output")
BACKWARD_SIGNATURE = ("g(grad_output, input, offset, weight, bias, stride, padding, dilation, "
                      "mask) -> (grad_input, grad_offset, grad_mask, grad_weight, grad_bias)")


class ImplementationError(Exception):
    """A call of the implementation failed; ``cause`` names how.

    Causes: ``exception`` (it raised), and for isolated implementations
    (:mod:`refdcn.verify.isolation`) ``timeout``, ``crash`` (a signal) and
    ``exit``.  ``partial`` holds what the call produced before it failed
    (e.g. the output when only the backward raised).
    """

    def __init__(self, cause, message, partial=None):
        super().__init__(message)
        self.cause = cause
        self.partial = partial or {}


def one_line(exc):
    """``"Type: first line of the message"`` (at most 200 characters)."""
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def quiet():
    """Around a call of an implementation: its warnings and floating-point flags are its
    own, and its prints go to stderr (never into a JSON report on stdout)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"), \
            contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        yield


class AdapterUnavailable(Exception):
    """The implementation cannot be loaded (missing library, bad IMPL string, wrong signature).

    The message is one line, says what is wrong and how to fix it.
    """


def to_numpy(value, what="result"):
    """A NumPy array from a NumPy array, torch tensor, CUDA device array or array-like."""
    if value is None:
        return None
    if hasattr(value, "detach") and hasattr(value, "cpu"):          # torch
        return value.detach().cpu().numpy()
    if hasattr(value, "copy_to_host"):                              # numba CUDA
        return value.copy_to_host()
    try:
        return np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{what} is a {type(value).__name__}, not an array: {exc}") from None


def _gradients_from(result, what):
    """Normalise a gradient result (sequence of 5 or mapping) to a dict of arrays."""
    if isinstance(result, dict):
        grads = {}
        for key in GRADIENT_KEYS:
            for name in (key, f"grad_{key}"):
                if name in result:
                    grads[key] = to_numpy(result[name], f"{what}[{name!r}]")
                    break
            else:
                grads[key] = None
        return grads
    if hasattr(result, "_asdict"):
        return _gradients_from(result._asdict(), what)
    try:
        items = list(result)
    except TypeError:
        raise TypeError(f"{what} returned a {type(result).__name__}; expected 5 gradients "
                        f"(input, offset, mask, weight, bias) or a mapping with those keys") \
            from None
    if len(items) != 5:
        raise TypeError(f"{what} returned {len(items)} values; expected 5 gradients in the "
                        f"order (input, offset, mask, weight, bias)")
    return {k: to_numpy(v, f"{what}[{i}]") for i, (k, v) in enumerate(zip(GRADIENT_KEYS, items))}


class Implementation:
    """Base class of the adapters.

    Attributes
    ----------
    name : str
        What the report calls it.
    description : str
    native_convention : str or None
        The offset-gradient convention its backward computes (None: it
        computes whichever it is asked for).
    has_backward : bool
    splittable : bool
        Whether it can be re-run on part of a batch (for the batch-split
        diagnosis); False for stored outputs.
    """
    name = "implementation"
    description = ""
    native_convention = "torchvision"
    has_backward = False
    splittable = True

    def unsupported(self, case):
        """Why this implementation cannot express ``case`` ('' if it can): such a case is
        reported as **unsupported** with this reason, never as an error."""
        return ""

    def forward(self, case):
        """Output of ``case`` (NumPy array)."""
        raise NotImplementedError

    def backward(self, case, convention):
        """Gradients of ``case``: dict with keys :data:`GRADIENT_KEYS`."""
        raise NotImplementedError

    def results(self, case, convention, gradients):
        """``{"output": ..., and the gradients if gradients}``: one case, one call.

        Isolated implementations (:mod:`refdcn.verify.isolation`) answer this
        in one round trip, under one time limit.
        """
        out = {}
        try:
            out["output"] = self.forward(case)
            if gradients:
                out.update(self.backward(case, convention))
        except ImplementationError:
            raise
        except (Exception, GeneratorExit) as exc:   # noqa: BLE001 - the implementation's failure
            raise ImplementationError("exception", one_line(exc), out) from exc
        return out


# ---------------------------------------------------------------- refdcn backends
class RefdcnBackend(Implementation):
    """One of refdcn's own backends through :func:`refdcn.deform_conv2d`."""
    native_convention = None
    has_backward = True

    def __init__(self, backend):
        try:
            module = backends.get(backend)
        except backends.BackendUnavailable as exc:
            raise AdapterUnavailable(str(exc)) from None
        self.backend = backend
        self.name = f"refdcn:{backend}"
        self.description = module.DESCRIPTION

    def forward(self, case):
        return to_numpy(api.deform_conv2d(*case.args(), backend=self.backend))

    def backward(self, case, convention):
        g = api.deform_conv2d_backward(case.grad_output, *case.args(), backend=self.backend,
                                       convention=convention)
        return {k: to_numpy(v) for k, v in g._asdict().items()}


# ---------------------------------------------------------------- torchvision
class Torchvision(Implementation):
    """``torchvision.ops.deform_conv2d`` on CPU tensors; gradients by autograd."""
    name = "torchvision"
    has_backward = True

    def __init__(self):
        try:
            import torch
            import torchvision.ops
        except ImportError as exc:
            raise AdapterUnavailable(
                f"torchvision is not installed here ({exc}): "
                f"pip install 'refdcn[peers]'") from None
        self.torch, self.op = torch, torchvision.ops.deform_conv2d
        self.description = f"torchvision {torchvision.__version__} (torch {torch.__version__}, CPU)"

    def _tensors(self, case, grad):
        t = self.torch
        conv = lambda a: None if a is None else t.from_numpy(np.array(a)).requires_grad_(grad)
        return [conv(a) for a in (case.input, case.offset, case.weight, case.bias, case.mask)]

    def _call(self, x, off, w, b, m, case):
        return self.op(x, off, w, b, stride=tuple(case.stride), padding=tuple(case.padding),
                       dilation=tuple(case.dilation), mask=m)

    def forward(self, case):
        x, off, w, b, m = self._tensors(case, False)
        with self.torch.no_grad():
            return self._call(x, off, w, b, m, case).numpy()

    def backward(self, case, convention):
        x, off, w, b, m = self._tensors(case, True)
        out = self._call(x, off, w, b, m, case)
        out.backward(self.torch.from_numpy(np.array(case.grad_output)))
        grad = lambda t: None if t is None else t.grad.numpy()
        return dict(input=grad(x), offset=grad(off), mask=grad(m), weight=grad(w), bias=grad(b))


# ---------------------------------------------------------------- mmcv
class Mmcv(Implementation):
    """``mmcv.ops.modulated_deform_conv2d`` (DCNv2; DCNv1 cases get a mask of ones)."""
    name = "mmcv"
    native_convention = "mmcv"
    has_backward = True

    def __init__(self):
        try:
            import torch
            from mmcv.ops import modulated_deform_conv2d
        except ImportError as exc:
            raise AdapterUnavailable(
                f"mmcv (with its compiled ops) is not installed here ({exc}); install a build "
                f"matching your torch: pip install -U openmim && mim install mmcv "
                f"(see https://mmcv.readthedocs.io/en/latest/get_started/installation.html)") \
                from None
        import mmcv
        self.torch, self.op = torch, modulated_deform_conv2d
        self.description = f"mmcv {mmcv.__version__} modulated_deform_conv2d (torch {torch.__version__})"

    def _run(self, case, grad):
        t = self.torch
        conv = lambda a: None if a is None else t.from_numpy(np.array(a)).requires_grad_(grad)
        x, off, w, b = (conv(a) for a in (case.input, case.offset, case.weight, case.bias))
        kh, kw = case.weight.shape[2:]
        groups = case.input.shape[1] // case.weight.shape[1]
        deform_groups = case.offset.shape[1] // (2 * kh * kw)
        mask = case.mask
        if mask is None:
            mask = np.ones((case.offset.shape[0], deform_groups * kh * kw) + case.offset.shape[2:],
                           dtype=case.offset.dtype)
        m = t.from_numpy(np.array(mask)).requires_grad_(grad)
        out = self.op(x, off, m, w, b, tuple(case.stride), tuple(case.padding),
                      tuple(case.dilation), groups, deform_groups)
        return out, (x, off, m, w, b)

    def forward(self, case):
        with self.torch.no_grad():
            out, _ = self._run(case, False)
        return out.numpy()

    def backward(self, case, convention):
        out, (x, off, m, w, b) = self._run(case, True)
        out.backward(self.torch.from_numpy(np.array(case.grad_output)))
        grad = lambda t: None if t is None or t.grad is None else t.grad.numpy()
        return dict(input=grad(x), offset=grad(off), mask=grad(m) if case.mask is not None else None,
                    weight=grad(w), bias=grad(b))


# ---------------------------------------------------------------- ONNX
def onnx_model(case, dtype=np.float64, opset=19):
    """A one-node ONNX model computing ``case`` with the standard ``DeformConv`` op.

    Graph inputs, in order: ``X``, ``W``, ``offset``, then ``B`` if the case has
    a bias and ``mask`` if it has a mask (an absent bias is an empty node input
    name).  Output ``Y``.  IR version 9 (the first with opset 19), so that
    older runtimes load it.

    Returns ``(model, names)`` with ``names`` the graph input names in order.
    """
    import onnx
    from onnx import helper
    elem = {np.dtype(np.float32): onnx.TensorProto.FLOAT,
            np.dtype(np.float64): onnx.TensorProto.DOUBLE,
            np.dtype(np.float16): onnx.TensorProto.FLOAT16}[np.dtype(dtype)]
    kh, kw = case.weight.shape[2:]
    groups = case.input.shape[1] // case.weight.shape[1]
    offset_groups = case.offset.shape[1] // (2 * kh * kw)
    node_inputs = ["X", "W", "offset", "B" if case.bias is not None else "",
                   "mask" if case.mask is not None else ""]
    while node_inputs[-1] == "":
        node_inputs.pop()
    names = [n for n in node_inputs if n]
    arrays = dict(X=case.input, W=case.weight, offset=case.offset, B=case.bias, mask=case.mask)
    node = helper.make_node(
        "DeformConv", node_inputs, ["Y"], kernel_shape=[int(kh), int(kw)],
        strides=[int(s) for s in case.stride], dilations=[int(d) for d in case.dilation],
        pads=[int(case.padding[0]), int(case.padding[1])] * 2, group=int(groups),
        offset_group=int(offset_groups))
    graph = helper.make_graph(
        [node], case.name or "deform_conv",
        [helper.make_tensor_value_info(n, elem, list(arrays[n].shape)) for n in names],
        [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="refdcn")
    model.ir_version = 9 if opset < 21 else 10
    return model, names


class _Onnx(Implementation):
    has_backward = False

    def __init__(self, opset):
        if opset not in (19, 22):
            raise AdapterUnavailable(f"--opset must be 19 or 22; got {opset}")
        self.opset = opset
        self._cache = {}

    def _feeds(self, case, names):
        arrays = dict(X=case.input, W=case.weight, offset=case.offset, B=case.bias,
                      mask=case.mask)
        return {n: np.ascontiguousarray(arrays[n]) for n in names}

    def _key(self, case):
        return (case.input.shape, case.weight.shape, case.offset.shape, case.stride,
                case.padding, case.dilation, case.bias is not None, case.mask is not None,
                np.dtype(case.input.dtype).str)

    def _load(self, model):
        """A runner for ``model`` with a ``run(output_names, feeds)`` method."""
        raise NotImplementedError

    def forward(self, case):
        key = self._key(case)
        if key not in self._cache:      # one model (and runner) per shape signature
            model, names = onnx_model(case, case.input.dtype, self.opset)
            self._cache[key] = (self._load(model), names)
        runner, names = self._cache[key]
        return runner.run(None, self._feeds(case, names))[0]


class OnnxRuntime(_Onnx):
    """A one-node ``DeformConv`` model run by ONNX Runtime's CPU provider."""
    name = "onnxruntime"

    def __init__(self, opset=19):
        super().__init__(opset)
        try:
            import onnx  # noqa: F401
            import onnxruntime
        except ImportError as exc:
            raise AdapterUnavailable(f"onnx and onnxruntime are needed ({exc}): "
                                     f"pip install 'refdcn[onnx]'") from None
        self.ort = onnxruntime
        self.description = f"onnxruntime {onnxruntime.__version__}, DeformConv opset {opset}, CPU"

    def _load(self, model):
        options = self.ort.SessionOptions()
        options.log_severity_level = 3
        return self.ort.InferenceSession(model.SerializeToString(), options,
                                         providers=["CPUExecutionProvider"])


class OnnxReference(_Onnx):
    """The same model run by ``onnx.reference.ReferenceEvaluator`` (pure Python; slow)."""
    name = "onnx-reference"

    def __init__(self, opset=19):
        super().__init__(opset)
        try:
            import onnx
            from onnx.reference import ReferenceEvaluator
        except ImportError as exc:
            raise AdapterUnavailable(f"onnx is needed ({exc}): "
                                     f"pip install 'refdcn[onnx]'") from None
        self.evaluator = ReferenceEvaluator
        self.description = f"onnx {onnx.__version__} ReferenceEvaluator, DeformConv opset {opset}"

    def _load(self, model):
        return self.evaluator(model)


# ---------------------------------------------------------------- user callables
def _load_callable(spec, option):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AdapterUnavailable(f"{option} {spec!r}: expected package.module:function")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterUnavailable(f"{option} {spec!r}: cannot import module {module_name!r} "
                                 f"({exc})") from None
    except Exception as exc:    # a module that fails while importing
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise AdapterUnavailable(f"{option} {spec!r}: importing {module_name!r} failed: "
                                 f"{type(exc).__name__}: {first}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AdapterUnavailable(f"{option} {spec!r}: module {module_name!r} has no "
                                     f"attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise AdapterUnavailable(f"{option} {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def _check_signature(func, spec, option, args, kwargs, expected):
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):      # builtins without a signature: trust the user
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise AdapterUnavailable(f"{option} {spec!r} has the signature {sig}, which cannot be "
                                 f"called as {expected} ({exc})") from None


class PythonCallable(Implementation):
    """A user function with torchvision's signature on NumPy arrays (and an optional backward).

    Its offset-gradient convention is not assumed: the report's note on it is
    computed from the results (:func:`refdcn.verify.runner.convention_note`).
    """
    native_convention = None

    def __init__(self, spec, backward=None):
        self.func = _load_callable(spec, "IMPL")
        _check_signature(self.func, spec, "IMPL", (0, 0, 0, None),
                         dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None),
                         FORWARD_SIGNATURE)
        self.name = spec
        self.description = f"Python callable {spec}"
        self.grad = None
        if backward is not None:
            self.grad = _load_callable(backward, "--backward")
            _check_signature(self.grad, backward, "--backward", (0,) * 9, {}, BACKWARD_SIGNATURE)
            self.description += f", gradients from {backward}"
        self.has_backward = self.grad is not None

    def forward(self, case):
        out = self.func(case.input, case.offset, case.weight, case.bias,
                        stride=tuple(case.stride), padding=tuple(case.padding),
                        dilation=tuple(case.dilation), mask=case.mask)
        return to_numpy(out, "the output")

    def backward(self, case, convention):
        result = self.grad(case.grad_output, case.input, case.offset, case.weight, case.bias,
                           tuple(case.stride), tuple(case.padding), tuple(case.dilation),
                           case.mask)
        return _gradients_from(result, "the gradient callable")


# ---------------------------------------------------------------- resolution
def is_refdcn_backend(spec):
    """Whether ``spec`` names one of refdcn's own backends (``refdcn:NAME`` or ``NAME``)."""
    return isinstance(spec, str) and (spec.startswith("refdcn:") or spec in backends.REGISTRY)


def resolve(spec, backward=None, opset=19):
    """The :class:`Implementation` named by ``spec``.

    Raises
    ------
    AdapterUnavailable
        With a one-line message: unknown name, missing library (and how to
        install it), a module that cannot be imported, a callable with the
        wrong signature.
    """
    if not isinstance(spec, str) or not spec:
        raise AdapterUnavailable("IMPL must be a name or package.module:function")
    if backward is not None and (":" not in spec or spec.startswith("refdcn:")):
        raise AdapterUnavailable("--backward goes with IMPL = package.module:function; the "
                                 "built-in adapters bring their own gradients")
    if spec == "torchvision":
        return Torchvision()
    if spec == "onnxruntime":
        return OnnxRuntime(opset)
    if spec in ("onnx-reference", "onnx_reference"):
        return OnnxReference(opset)
    if spec == "mmcv":
        return Mmcv()
    from .peers import PEERS
    if spec in PEERS:
        return PEERS[spec]()
    if is_refdcn_backend(spec):
        name = spec.split(":", 1)[1] if spec.startswith("refdcn:") else spec
        if name not in backends.REGISTRY:
            raise AdapterUnavailable(f"unknown refdcn backend {name!r}; known: "
                                     f"{', '.join(backends.REGISTRY)}")
        return RefdcnBackend(name)
    if ":" in spec:
        return PythonCallable(spec, backward)
    known = list(BUILTIN) + [f"refdcn:{b}" for b in backends.REGISTRY]
    raise AdapterUnavailable(f"unknown implementation {spec!r}; use one of {', '.join(known)} "
                             f"or package.module:function")
