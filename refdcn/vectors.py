"""Golden test vectors for implementations outside Python.

:func:`export` writes every conformance case to a directory::

    DIR/manifest.json                    what each case is, catches, shapes, tolerances
    DIR/cases/<case>.npz                 inputs and expected results (see below)
    DIR/onnx/<case>/model.onnx           the ONNX backend-test layout, float64:
    DIR/onnx/<case>/test_data_set_0/input_0.pb ... input_<k>.pb, output_0.pb
    DIR/onnx_float32/<case>/...          the same with float32 tensors

so that ONNX Runtime, TensorRT and any other ONNX consumer can run the forward
cases with their own test runners, and any other program can read the ``.npz``
files (NumPy's zip of ``.npy`` arrays; readers exist for C++, Rust, Julia...).

Keys of ``<case>.npz`` (all float64):

* inputs: ``input``, ``offset``, ``weight``, ``bias`` (if any), ``mask`` (if
  any), ``grad_output`` (the upstream gradient of the backward check);
* float64 expectations (float64 loop reference): ``output``, ``grad_input``,
  ``grad_offset_torchvision``, ``grad_offset_mmcv`` (the two offset-gradient
  conventions), ``grad_mask`` (if mask), ``grad_weight``, ``grad_bias`` (if bias);
* float32 expectations: ``f32_<name>`` for each of the above, computed in float64
  from the inputs rounded to float32 (round to nearest even), and
  ``f32_bound_<name>``: the element-wise error bound a float32 implementation
  must meet, ``|actual - f32_<name>| <= f32_bound_<name>`` (the default tier,
  which admits sampling coordinates and bilinear weights formed in float32),
  and ``f32_strict_bound_<name>`` (the strict tier: coordinates formed in
  double precision); see :mod:`refdcn.tolerances`.

:func:`check` compares outputs written by another program (see
:func:`load_outputs` for the accepted files) and returns the same
:class:`refdcn.verify.runner.Report` as ``refdcn verify``.
"""

import json
import os
from types import SimpleNamespace

import numpy as np

from . import __version__, conformance
from .geometry import check_arguments
from .testing import Case, reference_results
from .tolerances import FLOAT64_RTOL, float32_bounds, float32_implementation_bounds

__all__ = ["export", "load_manifest", "load_case", "load_outputs", "check", "MANIFEST",
           "FORMAT", "DataError"]


class DataError(ValueError):
    """A file of the golden vectors or of the outputs is malformed (one-line message).

    ``refdcn vectors check`` exits with status 3 on it.
    """

MANIFEST = "manifest.json"
FORMAT = "refdcn-golden-vectors"
INPUTS = ("input", "offset", "weight", "bias", "mask", "grad_output")
GRADS = ("input", "offset", "mask", "weight", "bias")

LAYOUT = {
    "input": "(N, C_in, H, W)",
    "offset": "(N, 2*offset_groups*kh*kw, H_out, W_out); channel 2*k is dy (row) and 2*k+1 dx "
              "(column) of k = (d*kh + i)*kw + j (offset group d, tap (i, j)): interleaved "
              "(dy, dx) pairs, row-major taps (torchvision, mmcv, ONNX DeformConv)",
    "weight": "(C_out, C_in/groups, kh, kw)",
    "bias": "(C_out,)",
    "mask": "(N, offset_groups*kh*kw, H_out, W_out); channel k as above; used raw",
    "output": "(N, C_out, H_out, W_out), H_out = (H + 2*ph - dh*(kh-1) - 1)//sh + 1",
    "sampling": "y = oy*sh - ph + i*dh + dy, x = ox*sw - pw + j*dw + dx; bilinear with a "
                "one-pixel zero border: 0 for y <= -1 or y >= H (x <= -1 or x >= W), corners "
                "outside the image contribute 0",
}
CONVENTIONS = {
    "torchvision": "offset gradient at exactly y = -1 (x = -1) is the inward one-sided "
                   "derivative (torchvision.ops.deform_conv2d)",
    "mmcv": "offset gradient is 0 outside the open square (-1, H) x (-1, W) (mmcv, "
            "DCNv2_op, CharlesShang/DCNv2, DCNv4)",
}


def _attributes(case):
    geom = check_arguments(case.input, case.offset, case.weight, case.bias, case.stride,
                           case.padding, case.dilation, case.mask)
    return {"kernel_shape": [geom.kh, geom.kw], "stride": list(geom.stride),
            "padding": list(geom.padding), "dilation": list(geom.dilation),
            "groups": geom.groups, "offset_groups": geom.offset_groups,
            "onnx_pads": [geom.padding[0], geom.padding[1]] * 2}


def _expected_arrays(case, prefix=""):
    tv = reference_results(case, "torchvision")
    mm = reference_results(case, "mmcv")
    for q in ("output", "input", "mask", "weight", "bias"):   # convention-independent
        if tv[q] is not None and not np.array_equal(tv[q], mm[q]):
            raise AssertionError(f"{case.name}: {q} differs between conventions")
    arrays = {f"{prefix}output": tv["output"],
              f"{prefix}grad_offset_torchvision": tv["offset"],
              f"{prefix}grad_offset_mmcv": mm["offset"]}
    for q in ("input", "mask", "weight", "bias"):
        if tv[q] is not None:
            arrays[f"{prefix}grad_{q}"] = tv[q]
    return arrays


def _float32_bounds(case, bounds=float32_bounds):
    c = case.astype(np.float64)
    if c.input.shape[0] == 0:
        tiny = np.finfo(np.float32).tiny
        shapes = {"output": (0,) + (c.weight.shape[0],) + c.offset.shape[2:],
                  "input": c.input.shape, "offset": c.offset.shape, "weight": c.weight.shape,
                  "mask": None if c.mask is None else c.mask.shape,
                  "bias": None if c.bias is None else c.bias.shape}
        return {q: None if s is None else np.full(s, tiny) for q, s in shapes.items()}
    return bounds(c.grad_output, *c.args())


def _case_arrays(case):
    arrays = {k: getattr(case, k) for k in INPUTS if getattr(case, k) is not None}
    arrays.update(_expected_arrays(case))
    c32 = case.astype(np.float32).astype(np.float64)
    c32.name = case.name
    arrays.update(_expected_arrays(c32, "f32_"))
    for prefix, tier in (("f32_bound_", float32_implementation_bounds),
                         ("f32_strict_bound_", float32_bounds)):
        bounds = _float32_bounds(c32, tier)
        arrays[f"{prefix}output"] = bounds["output"]
        for q in GRADS:
            if bounds.get(q) is None:
                continue
            if q == "offset":
                arrays[f"{prefix}grad_offset_torchvision"] = bounds[q]
                arrays[f"{prefix}grad_offset_mmcv"] = bounds[q]
            else:
                arrays[f"{prefix}grad_{q}"] = bounds[q]
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}


def _write_onnx_case(directory, case, dtype, opset):
    from onnx import numpy_helper
    from .verify.adapters import onnx_model
    c = case.astype(dtype)
    model, names = onnx_model(c, dtype, opset)
    os.makedirs(os.path.join(directory, "test_data_set_0"), exist_ok=True)
    with open(os.path.join(directory, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    arrays = dict(X=c.input, W=c.weight, offset=c.offset, B=c.bias, mask=c.mask)
    for k, name in enumerate(names):
        tensor = numpy_helper.from_array(np.ascontiguousarray(arrays[name]), name)
        with open(os.path.join(directory, "test_data_set_0", f"input_{k}.pb"), "wb") as f:
            f.write(tensor.SerializeToString())
    expected = reference_results(c, "torchvision")["output"].astype(dtype)
    tensor = numpy_helper.from_array(np.ascontiguousarray(expected), "Y")
    with open(os.path.join(directory, "test_data_set_0", "output_0.pb"), "wb") as f:
        f.write(tensor.SerializeToString())


def export(directory, cases=None, onnx=True, opset=19):
    """Write the golden vectors of ``cases`` (default: all) to ``directory``.

    Parameters
    ----------
    directory : str
        Created if needed; existing files of the same names are overwritten.
    cases : list of ConformanceCase, optional
    onnx : bool
        Also write the ONNX backend-test layout (needs the ``onnx`` package).
    opset : {19, 22}

    Returns
    -------
    dict
        The manifest (also written to ``directory/manifest.json``).
    """
    cases = conformance.CASES if cases is None else cases
    if onnx:
        try:
            import onnx as _onnx  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"the ONNX layout needs the onnx package ({exc}): "
                              f"pip install 'refdcn[onnx]', or export without it: "
                              f"refdcn vectors export DIR --no-onnx") from None
    os.makedirs(os.path.join(directory, "cases"), exist_ok=True)
    entries = []
    for cc in cases:
        case = cc.build()
        arrays = _case_arrays(case)
        path = os.path.join("cases", f"{cc.name}.npz")
        np.savez(os.path.join(directory, path), **arrays)
        entry = {
            "name": cc.name, "catches": cc.catches, "file": path.replace(os.sep, "/"),
            "description": case.describe(), "attributes": _attributes(case),
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                       for k, v in arrays.items() if not k.startswith("f32_")},
            "onnx": None, "onnx_float32": None,
            "onnx_omitted": (None if onnx and cc.onnx else
                             "exported with --no-onnx" if not onnx else cc.onnx_omitted),
        }
        if onnx and cc.onnx:
            for key, dtype in (("onnx", np.float64), ("onnx_float32", np.float32)):
                sub = os.path.join(key, cc.name)
                _write_onnx_case(os.path.join(directory, sub), case, dtype, opset)
                entry[key] = sub.replace(os.sep, "/")
        entries.append(entry)
    manifest = {
        "format": FORMAT, "version": 1, "refdcn_version": __version__,
        "operator": "deformable convolution (DCNv1 without mask, DCNv2 with mask), "
                    "torchvision.ops.deform_conv2d semantics",
        "layout": LAYOUT, "conventions": CONVENTIONS,
        "npz_keys": {
            "inputs": list(INPUTS),
            "expected_float64": ["output", "grad_input", "grad_offset_torchvision",
                                 "grad_offset_mmcv", "grad_mask", "grad_weight", "grad_bias"],
            "expected_float32": "f32_<key>: expected values for the inputs rounded to float32; "
                                "f32_bound_<key>: the element-wise bound on |actual - f32_<key>| "
                                "(float32 coordinates and weights admitted); "
                                "f32_strict_bound_<key>: the strict bound (coordinates in "
                                "double precision)",
        },
        "tolerances": {
            "float64": {"rtol": FLOAT64_RTOL,
                        "metric": "normwise relative error max|actual - expected| / "
                                  "max|expected| (0 if both are empty)"},
            "float32": {"metric": "every element |actual - f32_<key>| <= f32_bound_<key> "
                                  "(gamma_n * sum|terms|, Higham eq. 3.5, plus what sampling "
                                  "coordinates, fractions and corner weights formed in float32 "
                                  "cost: refdcn.tolerances.coordinate_terms); strict: "
                                  "f32_strict_bound_<key> (coordinates formed in float64)"},
        },
        "onnx": {"opset": opset, "ir_version": 9 if opset < 21 else 10,
                 "inputs": "X, W, offset, then B if bias, mask if mask (graph input order = "
                           "input_<k>.pb order)", "output": "Y"},
        "outputs_for_check": "refdcn vectors check DIR OUTPUTS reads OUTPUTS/<case>.npy (the "
                             "output) or OUTPUTS/<case>.npz (keys output, grad_input, "
                             "grad_offset, grad_mask, grad_weight, grad_bias)",
        "cases": entries,
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def load_manifest(directory, expected_format=FORMAT):
    """The manifest of an exported directory (ValueError if it is not one).

    ``expected_format``: :data:`FORMAT`, or the DCNv3/DCNv4 vectors'
    (:data:`refdcn.vectors_dcnv34.FORMAT`)."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{directory!r} has no {MANIFEST}: not a directory written by "
                         f"'refdcn vectors export'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        raise DataError(f"{path} is not a refdcn golden-vector manifest")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and
            isinstance(e.get("file"), str) and isinstance(e.get("attributes"), dict)
            for e in cases):
        raise DataError(f"{path}: 'cases' must be a list of entries with a name, a file and "
                        f"attributes")
    return manifest


def _read_npz(path, what):
    """``{key: array}`` of an ``.npz`` file; DataError (one line) if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("an .npy array, not an .npz archive")
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except Exception as exc:           # noqa: BLE001 - truncated zip, garbage, pickles...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what} {path} cannot be read: {first}") from None


def load_case(directory, entry):
    """``(case, arrays)``: the :class:`~refdcn.testing.Case` of a manifest entry, and its npz.

    Raises
    ------
    DataError
        The case file is missing, unreadable or lacks an array or attribute.
    """
    path = os.path.join(directory, entry["file"])
    arrays = _read_npz(path, f"case {entry['name']!r}:")
    a = entry["attributes"]
    try:
        case = Case(arrays["input"], arrays["offset"], arrays["weight"], arrays.get("bias"),
                    arrays.get("mask"), arrays["grad_output"], stride=tuple(a["stride"]),
                    padding=tuple(a["padding"]), dilation=tuple(a["dilation"]),
                    name=entry["name"])
        check_arguments(*case.args())
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"case {entry['name']!r}: {path} is not a valid case "
                        f"({type(exc).__name__}: {exc})") from None
    for key in ("output", "grad_offset_torchvision", "grad_offset_mmcv"):
        if key not in arrays:
            raise DataError(f"case {entry['name']!r}: {path} has no {key!r}")
    return case, arrays


_OUTPUT_KEYS = {"output": ("output", "Y", "y"), "input": ("grad_input", "input"),
                "offset": ("grad_offset", "offset"), "mask": ("grad_mask", "mask"),
                "weight": ("grad_weight", "weight"), "bias": ("grad_bias", "bias")}


def load_outputs(outputs, name):
    """Results another program wrote for case ``name``, or None if there are none.

    Looks for ``OUTPUTS/<name>.npz`` (keys ``output``, ``grad_input``,
    ``grad_offset``, ``grad_mask``, ``grad_weight``, ``grad_bias``; any subset
    with ``output``), ``OUTPUTS/<name>.npy`` (the output only), or, if
    ``outputs`` is itself an ``.npz`` file, its key ``<name>`` (the output) and
    ``<name>/<key>`` keys.

    Returns
    -------
    dict ``{quantity: array}`` with quantities output, input, offset, mask,
    weight, bias (only those present), or None.
    """
    if os.path.isfile(outputs):
        data = _read_npz(outputs, "outputs file")
        found = {}
        if name in data:
            found["output"] = data[name]
        for q, keys in _OUTPUT_KEYS.items():
            for k in keys:
                if f"{name}/{k}" in data:
                    found[q] = data[f"{name}/{k}"]
                    break
        return found or None
    npz, npy = os.path.join(outputs, f"{name}.npz"), os.path.join(outputs, f"{name}.npy")
    if os.path.exists(npz):
        data = _read_npz(npz, "outputs file")
        found = {}
        for q, keys in _OUTPUT_KEYS.items():
            for k in keys:
                if k in data:
                    found[q] = data[k]
                    break
        if not found:
            raise DataError(f"outputs file {npz} has none of the keys output, grad_input, "
                            f"grad_offset, grad_mask, grad_weight, grad_bias (it has "
                            f"{', '.join(sorted(data)) or 'no arrays'})")
        return found
    if os.path.exists(npy):
        try:
            return {"output": np.load(npy, allow_pickle=False)}
        except Exception as exc:       # noqa: BLE001 - truncated or garbage file
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"outputs file {npy} cannot be read: {first}") from None
    return None


def check(directory, outputs, dtype=None, convention="torchvision", rtol=None, names=None,
          diagnose_failures=True, allow_missing=False, strict=False):
    """Compare outputs written by another program with the golden vectors.

    Parameters
    ----------
    directory : str
        Written by :func:`export`.
    outputs : str
        A directory of ``<case>.npz`` / ``<case>.npy`` files, or one ``.npz`` file
        (see :func:`load_outputs`).
    dtype : {None, "float32", "float64"}
        The precision the program computed in; None: the dtype of its arrays.
    convention : {"torchvision", "mmcv"}
        Which expected offset gradient to compare with.
    rtol : float, optional
        As ``refdcn verify --rtol``.
    names : list of str, optional
        Substrings: only cases whose name contains one of them.
    strict : bool
        float32: the strict tier (as ``refdcn verify --strict``).
    allow_missing : bool
        Whether cases without outputs may pass the run (they are listed either way).

    Returns
    -------
    refdcn.verify.runner.Report
        Every selected case of the manifest has a row.  Cases without any output
        file are ``missing`` (a failure unless ``allow_missing``).  A case needs
        its output; if any case has gradients, every case needs every gradient
        it defines (else an ERROR row, cause ``missing_quantity``).

    Raises
    ------
    ValueError
        No output at all, or ``outputs`` does not exist (a usage error).
    DataError
        A malformed manifest, case file or outputs file.
    """
    from .verify.measure import Tolerance
    from .verify.runner import CaseResult, Report, check_results, find_common
    manifest = load_manifest(directory)
    entries = [e for e in manifest["cases"]
               if not names or any(n in e["name"] for n in names)]
    if not os.path.exists(outputs):
        raise ValueError(f"outputs {outputs!r} do not exist")
    found = {e["name"]: load_outputs(outputs, e["name"]) for e in entries}
    present = [v for v in found.values() if v is not None]
    if not present:
        raise ValueError(f"no outputs found in {outputs!r} for any of the {len(entries)} "
                         f"cases (expected files like {entries[0]['name']}.npy or .npz)"
                         if entries else "no case selected")
    if dtype is None:
        dtype = np.float32 if any(np.asarray(v["output"]).dtype == np.float32
                                  for v in present if "output" in v) else np.float64
    dtype = np.dtype(dtype)
    tolerance = Tolerance(dtype, rtol, strict)
    has_grads = any(set(v) - {"output"} for v in present)
    report = Report(f"outputs in {outputs}", f"golden vectors from {directory} "
                    f"(refdcn {manifest.get('refdcn_version', '?')})", str(dtype), convention,
                    tolerance, has_grads, allow_missing=allow_missing)
    prefix = "f32_" if dtype == np.float32 else ""
    built = {}
    for entry in entries:
        actual = found[entry["name"]]
        cc = SimpleNamespace(name=entry["name"], catches=entry.get("catches", ""))
        if actual is None:
            report.results.append(CaseResult(cc.name, cc.catches, "missing"))
            continue
        case, arrays = load_case(directory, entry)
        if dtype == np.float32:
            case = case.astype(np.float32)
        built[entry["name"]] = case
        try:
            expected = {"output": arrays[f"{prefix}output"],
                        "offset": arrays[f"{prefix}grad_offset_{convention}"]}
        except KeyError as exc:
            raise DataError(f"case {entry['name']!r}: {entry['file']} has no {exc}") from None
        for q in ("input", "mask", "weight", "bias"):
            expected[q] = arrays.get(f"{prefix}grad_{q}")
        if has_grads:               # then every gradient the case defines must be there
            actual = {q: actual.get(q) for q in ("output",) + GRADS}
        result = check_results(case, cc, actual, expected, tolerance, convention,
                               diagnose_failures=diagnose_failures)
        report.results.append(result)
    if diagnose_failures:
        find_common(report, built)
    return report
