"""Golden test vectors of DCNv3 / DCNv4 for implementations outside Python.

:func:`export` writes every case of :mod:`refdcn.conformance_dcnv34` for one operator::

    DIR/manifest.json                        layouts, attributes, tolerances, what each case catches
    DIR/cases/<case>.npz                     inputs and expected results
    DIR/onnx/<case>/model.onnx               ONNX backend-test layout, float64 (custom-domain node)
    DIR/onnx/<case>/test_data_set_0/input_<k>.pb, output_0.pb
    DIR/onnx_float32/<case>/...              the same in float32

npz keys (float64): inputs ``input``, ``offset`` and ``mask`` (dcnv3) or
``offset_mask`` (dcnv4, padding channels filled with values that must be
ignored), ``grad_output``; expected ``output``, ``grad_input``, ``grad_offset`` and
``grad_mask`` (dcnv3) or ``grad_offset_mask`` (dcnv4; 0 in the padding), all
under DCNv3/v4's gradient rule (0 offset gradient on and beyond -1 and H);
``f32_<key>``: the same for the inputs rounded to float32, and ``f32_bound_<key>``
the element-wise bound a float32 implementation must meet
(:mod:`refdcn.dcnv34.tolerances`).

The ONNX models hold one node of a **custom domain** (no standard ONNX operator
exists for either):

* DCNv3: ``mmdeploy::TRTDCNv3`` (inputs ``input, offset, mask``), the node
  InternImage's ``DCNv3Function.symbolic`` exports and mmdeploy's TensorRT
  plugin implements, with its attributes ``kernel_h, kernel_w, stride_h,
  stride_w, pad_h, pad_w, dilation_h, dilation_w, group, group_channels``
  (int), ``offset_scale`` (float), ``im2col_step`` (int, 1: it does not change
  the result), ``remove_center`` (int);
* DCNv4: ``refdcn::DCNv4`` (inputs ``input, offset_mask``) with the same
  attributes minus ``im2col_step``, plus ``softmax = 0``.

ONNX Runtime has no kernel for them: the models are for runtimes with a plugin
(TensorRT, custom ONNX Runtime ops, NPU toolchains) and their test runners.
"""

import json
import os

import numpy as np

from . import __version__, conformance_dcnv34 as conformance
from .dcnv34.tolerances import float32_bounds, pack_bounds
from .tolerances import FLOAT64_RTOL

__all__ = ["export", "load_manifest", "check", "FORMAT", "ONNX_NODES"]

FORMAT = "refdcn-golden-vectors-dcnv34"
MANIFEST = "manifest.json"

#: (domain, op_type, input names) of the exported ONNX node, per operator.
ONNX_NODES = {"dcnv3": ("mmdeploy", "TRTDCNv3", ("input", "offset", "mask")),
              "dcnv4": ("refdcn", "DCNv4", ("input", "offset_mask"))}

LAYOUT = {
    "input": "(N, H, W, group*group_channels), channels-last",
    "offset": "(N, H_out, W_out, group*K*2): channel g*2K + 2t is dx (column), g*2K + 2t + 1 "
              "dy (row) of tap t of group g; taps x-major, t = j*kernel_h + i for kernel row i "
              "and column j, the centre skipped if remove_center; K = kernel_h*kernel_w - "
              "remove_center",
    "mask": "(N, H_out, W_out, group*K): channel g*K + t, used as given (no softmax)",
    "offset_mask": "(N, H_out, W_out, ceil(3*group*K/8)*8): per group g from channel g*3K the 2K "
                   "offsets (as offset) then the K weights; channels >= 3*group*K are padding, "
                   "filled with values that must not be read",
    "output": "(N, H_out, W_out, group*group_channels), H_out = (H + 2*pad_h - "
              "(dilation_h*(kernel_h-1)+1)) // stride_h + 1",
    "sampling": "y = oy*stride_h - pad_h + c_h + (i*dilation_h - c_h + dy)*offset_scale with "
                "c_h = (dilation_h*(kernel_h-1))//2 (x likewise); bilinear with a one-pixel zero "
                "border (0 on and beyond -1 and H); out = sum_t weight_t * sample_t per channel",
    "gradient_rule": "the offset gradient of a sample on or beyond y = -1, x = -1, y = H, x = W "
                     "is 0 (DCNv3/DCNv4 CUDA kernels)",
}


def _arrays(case, op, prefix=""):
    exp = conformance.reference_results(case, op)
    arrays = {f"{prefix}output": exp["output"]}
    for q in conformance_quantities(op)[1:]:
        arrays[f"{prefix}grad_{q}"] = exp[q]
    return arrays


def conformance_quantities(op):
    return ("output", "input", "offset", "mask") if op == "dcnv3" else \
        ("output", "input", "offset_mask")


def _case_arrays(case, op):
    inputs = {"input": case.input, "grad_output": case.grad_output}
    if op == "dcnv3":
        inputs.update(offset=case.offset, mask=case.mask)
    else:
        inputs["offset_mask"] = case.packed()
    arrays = dict(inputs)
    arrays.update(_arrays(case, op))
    c32 = case.astype(np.float32).astype(np.float64)
    arrays.update(_arrays(c32, op, "f32_"))
    b = float32_bounds(c32.input, c32.offset, c32.mask, c32.grad_output, c32.attrs)
    if op == "dcnv4":
        b = pack_bounds(b, case.packed().shape, case.attrs["group"], case.taps)
    for q in conformance_quantities(op):
        arrays[f"f32_bound_{'output' if q == 'output' else 'grad_' + q}"] = b[q]
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}


def onnx_model(case, op, dtype):
    """``(model, inputs)``: a one-node ONNX model of ``case`` (see :data:`ONNX_NODES`)."""
    from onnx import TensorProto, helper
    domain, op_type, names = ONNX_NODES[op]
    a = case.attrs
    attrs = {k: int(a[k]) for k in conformance.ATTRIBUTES if k not in ("offset_scale",
                                                                       "remove_center")}
    attrs.update(offset_scale=float(a["offset_scale"]), remove_center=int(a["remove_center"]))
    attrs.update(im2col_step=1) if op == "dcnv3" else attrs.update(softmax=0)
    elem = TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT
    c = case.astype(dtype)
    values = {"input": c.input, "offset": c.offset, "mask": c.mask, "offset_mask": c.packed()}
    node = helper.make_node(op_type, list(names), ["output"], domain=domain, **attrs)
    out_shape = list(c.grad_output.shape)
    graph = helper.make_graph(
        [node], f"{op}_{case.name}",
        [helper.make_tensor_value_info(n, elem, list(values[n].shape)) for n in names],
        [helper.make_tensor_value_info("output", elem, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(domain, 1)],
                              producer_name="refdcn", producer_version=__version__)
    model.ir_version = 9
    return model, [values[n] for n in names]


def _write_onnx(directory, case, op, dtype):
    from onnx import numpy_helper
    model, inputs = onnx_model(case, op, dtype)
    os.makedirs(os.path.join(directory, "test_data_set_0"), exist_ok=True)
    with open(os.path.join(directory, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    names = ONNX_NODES[op][2]
    for k, (name, value) in enumerate(zip(names, inputs)):
        with open(os.path.join(directory, "test_data_set_0", f"input_{k}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(np.ascontiguousarray(value), name)
                    .SerializeToString())
    c = case.astype(dtype).astype(np.float64)
    expected = conformance.reference_results(c, op)["output"].astype(dtype)
    with open(os.path.join(directory, "test_data_set_0", "output_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(expected, "output").SerializeToString())


def export(directory, op, cases=None, onnx=True):
    """Write the golden vectors of ``cases`` (default: all) for ``op`` to ``directory``.

    Returns the manifest (also written to ``directory/manifest.json``).
    Raises ImportError (with the install command) when ``onnx`` is requested
    but the onnx package is missing.
    """
    if op not in conformance.OPS:
        raise ValueError(f"op must be one of {conformance.OPS}; got {op!r}")
    cases = conformance.CASES if cases is None else cases
    if onnx:
        try:
            import onnx as _onnx  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"the ONNX layout needs the onnx package ({exc}); pip install "
                              f"onnx, or export with --no-onnx") from None
    os.makedirs(os.path.join(directory, "cases"), exist_ok=True)
    entries = []
    for cc in cases:
        case = cc.build()
        arrays = _case_arrays(case, op)
        path = f"cases/{cc.name}.npz"
        np.savez(os.path.join(directory, path), **arrays)
        entry = {"name": cc.name, "catches": cc.catches, "file": path,
                 "description": case.describe(), "attributes": dict(case.attrs),
                 "input_view": case.meta.get("input_view", "contiguous"),
                 "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                            for k, v in arrays.items() if not k.startswith("f32_")},
                 "onnx": None, "onnx_float32": None}
        if onnx:
            for key, dtype in (("onnx", np.float64), ("onnx_float32", np.float32)):
                sub = f"{key}/{cc.name}"
                _write_onnx(os.path.join(directory, sub), case, op, dtype)
                entry[key] = sub
        entries.append(entry)
    domain, op_type, names = ONNX_NODES[op]
    manifest = {
        "format": FORMAT, "version": 1, "refdcn_version": __version__,
        "operator": f"{op}: " + ("InternImage DCNv3 (ops_dcnv3, DCNv3Function)" if op == "dcnv3"
                                 else "OpenGVLab DCNv4 (DCNv4Function), softmax off"),
        "layout": {k: v for k, v in LAYOUT.items()
                   if k not in (("offset_mask",) if op == "dcnv3" else ("offset", "mask"))},
        "npz_keys": {"inputs": ["input", *names[1:], "grad_output"],
                     "expected_float64": ["output"] + [f"grad_{q}" for q in
                                                       conformance_quantities(op)[1:]],
                     "expected_float32": "f32_<key>, with the element-wise bound "
                                         "f32_bound_<key>"},
        "tolerances": {"float64": {"rtol": FLOAT64_RTOL, "metric": "max|actual - expected| / "
                                   "max|expected|"},
                       "float32": {"metric": "every element |actual - f32_<key>| <= "
                                             "f32_bound_<key> (sampling coordinates in float64)"}},
        "onnx": {"domain": domain, "op_type": op_type, "inputs": list(names),
                 "output": "output", "opset": {"": 17, domain: 1}, "ir_version": 9,
                 "note": "custom-domain node: needs a runtime plugin (ONNX Runtime has no "
                         "kernel for it)"},
        "outputs_for_check": "refdcn vectors check --op OP DIR OUTPUTS reads OUTPUTS/<case>.npy "
                             "(the output) or OUTPUTS/<case>.npz (output and grad_* keys)",
        "cases": entries,
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def load_manifest(directory):
    """The manifest of a directory written by :func:`export` (ValueError if it is not one)."""
    from .vectors import load_manifest as load
    return load(directory, FORMAT)


def _load_outputs(outputs, name):
    npz, npy = os.path.join(outputs, f"{name}.npz"), os.path.join(outputs, f"{name}.npy")
    if os.path.exists(npz):
        with np.load(npz) as data:
            return {k: data[k] for k in data.files}
    if os.path.exists(npy):
        return {"output": np.load(npy)}
    return None


def check(directory, outputs, dtype=None, rtol=None, names=None):
    """Compare the outputs another program wrote with the vectors in ``directory``.

    The expected values and float32 bounds are the ones stored in
    ``directory``; the cases' inputs (for the diagnosis of failures) come from
    :mod:`refdcn.conformance_dcnv34`.  Returns a
    :class:`refdcn.verify.dcnv34.Report` over the cases that have outputs (``OUTPUTS/<case>.npy`` or ``.npz`` with ``output`` and ``grad_*``
    keys); ValueError if there are none.
    """
    from .verify import dcnv34 as verifier
    manifest = load_manifest(directory)
    op = manifest["operator"].split(":")[0]
    found = {}
    for e in manifest["cases"]:
        if names and not any(n in e["name"] for n in names):
            continue
        got = _load_outputs(outputs, e["name"]) if os.path.isdir(outputs) else None
        if got is not None:
            found[e["name"]] = got
    if not found:
        raise ValueError(f"no outputs for any case in {outputs!r} (expected files like "
                         f"{manifest['cases'][0]['name']}.npy)")
    if dtype is None:
        dtype = np.float32 if any(v["output"].dtype == np.float32 for v in found.values()) \
            else np.float64
    has_grads = any(len(v) > 1 for v in found.values())
    quantities = conformance_quantities(op)

    def forward(case, op):
        return found[case.name]["output"]

    def backward(case, op, convention):
        got = found[case.name]
        return {q: got[f"grad_{q}"] for q in quantities[1:] if f"grad_{q}" in got}
    impl = verifier.Implementation(f"outputs in {outputs}", f"golden vectors from {directory}",
                                   forward, backward if has_grads else None)
    entries = {e["name"]: e for e in manifest["cases"]}
    prefix = "f32_" if np.dtype(dtype) == np.float32 else ""

    def stored(name, key_prefix):
        with np.load(os.path.join(directory, entries[name]["file"])) as data:
            return {q: data[key_prefix + ("output" if q == "output" else f"grad_{q}")]
                    for q in quantities}
    try:
        cases = [conformance.get_case(n) for n in found]
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]} (vectors from another refdcn version?)") from None
    return verifier.verify(impl, op, cases, dtype, rtol=rtol,
                           expected=lambda name: stored(name, prefix),
                           bounds=lambda name: stored(name, "f32_bound_"))


def run_command(args):
    """``refdcn vectors export|check --op dcnv3|dcnv4 ...`` (options of :mod:`refdcn.commands.vectors`)."""
    from .cli import DataError, UsageError
    from .vectors import DataError as MalformedFile
    from .verify import dcnv34 as verifier
    op = args.op
    if args.action == "export":
        cases = conformance.select(args.case)
        if not cases:
            raise UsageError(f"no DCNv3/DCNv4 case matches {args.case}")
        try:
            manifest = export(args.directory, op, cases, onnx=not args.no_onnx)
        except (ImportError, OSError) as exc:
            raise UsageError(str(exc)) from None
        domain, op_type, _ = ONNX_NODES[op]
        print(f"wrote {len(manifest['cases'])} {op} cases to {args.directory}: {MANIFEST}, "
              f"cases/*.npz" + ("" if args.no_onnx else
                                f", onnx/ and onnx_float32/ (custom node {domain}::{op_type})"))
        return 0
    if args.action == "check":
        if not os.path.isdir(args.directory):
            raise UsageError(f"DIR {args.directory!r} is not a directory")
        try:
            manifest_op = load_manifest(args.directory)["operator"].split(":")[0]
            if manifest_op != op:
                raise ValueError(f"{args.directory} holds {manifest_op} vectors, not {op}")
            report = check(args.directory, args.outputs,
                           None if args.dtype == "auto" else args.dtype, args.rtol, args.case)
        except MalformedFile as exc:      # a malformed file: exit status 3
            raise DataError(str(exc)) from None
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from None
        print(verifier.format_json(report) if args.json else verifier.format_text(report))
        return report.exit_code()
    raise UsageError("ACTION is required: refdcn vectors export --op OP DIR | "
                     "refdcn vectors check --op OP DIR OUTPUTS")
