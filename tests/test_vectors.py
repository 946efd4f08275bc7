"""Golden vectors: ``refdcn vectors export`` and ``refdcn vectors check``."""

import glob
import json
import os

import numpy as np
import pytest

import broken_impls
import refdcn
from refdcn import cli, conformance, vectors

CASES = ["onnx_mask_bias", "mmcv_small", "border_exact_y", "height_one", "random_5",
         "torchvision_awkward_batch0"]


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("golden"))
    pytest.importorskip("onnx")
    code = cli.main(["vectors", "export", directory] + sum([["--case", c] for c in CASES], []))
    assert code == 0
    return directory


def entries(directory):
    return {e["name"]: e for e in vectors.load_manifest(directory)["cases"]}


def test_manifest(golden):
    m = vectors.load_manifest(golden)
    assert m["format"] == "refdcn-golden-vectors" and m["tolerances"]["float64"]["rtol"] == 1e-12
    e = entries(golden)
    assert set(e) == set(CASES)
    mm = e["mmcv_small"]
    assert mm["catches"] == conformance.get_case("mmcv_small").catches
    assert mm["attributes"] == {"kernel_shape": [2, 2], "stride": [1, 1], "padding": [1, 1],
                                "dilation": [1, 1], "groups": 1, "offset_groups": 1,
                                "onnx_pads": [1, 1, 1, 1]}
    assert mm["arrays"]["offset"] == {"shape": [1, 8, 4, 4], "dtype": "float64"}
    assert e["torchvision_awkward_batch0"]["onnx"] is None          # ONNX cannot express N = 0
    assert mm["onnx"] == "onnx/mmcv_small"


def test_npz_contents(golden):
    case, arrays = vectors.load_case(golden, entries(golden)["mmcv_small"])
    exp_tv = conformance.expected("mmcv_small", "torchvision")
    exp_mm = conformance.expected("mmcv_small", "mmcv")
    assert np.array_equal(arrays["output"], exp_tv["output"])
    assert np.array_equal(arrays["grad_offset_torchvision"], exp_tv["offset"])
    assert np.array_equal(arrays["grad_offset_mmcv"], exp_mm["offset"])
    assert np.array_equal(arrays["grad_mask"], exp_tv["mask"])
    assert "bias" not in arrays and "grad_bias" not in arrays
    for key in ("output", "grad_input", "grad_offset_torchvision", "grad_mask", "grad_weight"):
        assert arrays[f"f32_{key}"].shape == arrays[key].shape
        assert np.all(arrays[f"f32_strict_bound_{key}"] > 0)
        assert np.all(arrays[f"f32_bound_{key}"] >= arrays[f"f32_strict_bound_{key}"])
    assert np.array_equal(case.mask, np.full((1, 4, 4, 4), 0.5))


def test_onnx_layout_runs_in_onnxruntime(golden):
    ort = pytest.importorskip("onnxruntime")
    from onnx import load_tensor, numpy_helper
    for layout in ("onnx", "onnx_float32"):
        dirs = sorted(glob.glob(os.path.join(golden, layout, "*")))
        assert len(dirs) == len(CASES) - 1
        for d in dirs:
            session = ort.InferenceSession(os.path.join(d, "model.onnx"),
                                           providers=["CPUExecutionProvider"])
            files = sorted(glob.glob(os.path.join(d, "test_data_set_0", "input_*.pb")))
            feeds = {i.name: numpy_helper.to_array(load_tensor(f))
                     for i, f in zip(session.get_inputs(), files)}
            got = session.run(None, feeds)[0]
            want = numpy_helper.to_array(load_tensor(os.path.join(d, "test_data_set_0",
                                                                  "output_0.pb")))
            assert got.dtype == want.dtype
            rtol = 1e-12 if layout == "onnx" else 1e-5
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol, err_msg=d)


def write_outputs(golden, directory, impl, gradients=False, dtype=np.float64):
    """Run ``impl`` on the stored inputs like an outside program would; write its files."""
    os.makedirs(directory, exist_ok=True)
    for name, entry in entries(golden).items():
        case, _ = vectors.load_case(golden, entry)
        case = case.astype(dtype)
        out = impl(*case.args())
        if gradients:
            g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend="numpy")
            np.savez(os.path.join(directory, f"{name}.npz"), output=out,
                     **{f"grad_{k}": v for k, v in g._asdict().items() if v is not None})
        else:
            np.save(os.path.join(directory, f"{name}.npy"), out)


def run_check(argv, capsys):
    code = cli.main(["vectors", "check"] + argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_correct_outputs_with_gradients(golden, tmp_path, capsys):
    outputs = str(tmp_path / "out")
    write_outputs(golden, outputs, lambda *a: refdcn.deform_conv2d(*a, backend="numpy"),
                  gradients=True)
    code, out, _ = run_check([golden, outputs], capsys)
    assert code == 0, out
    assert f"{len(CASES)}/{len(CASES)} cases pass" in out
    # the same gradients are wrong for the mmcv convention exactly where samples land on -1
    code, out, _ = run_check([golden, outputs, "--convention", "mmcv", "--json"], capsys)
    data = json.loads(out)
    assert code == 1
    failed = {c["name"]: c for c in data["cases"] if c["status"] == "fail"}
    assert set(failed) == {"mmcv_small", "border_exact_y"}
    assert all(c["diagnosis"]["cause"] == "convention" for c in failed.values())


def test_check_diagnoses_a_broken_program(golden, tmp_path, capsys):
    outputs = str(tmp_path / "broken")
    write_outputs(golden, outputs, broken_impls.mask_ignored)
    code, out, _ = run_check([golden, outputs], capsys)
    assert code == 1
    report = vectors.check(golden, outputs)
    failed = {r.name: r for r in report.results if r.status == "fail"}
    assert set(failed) == {"onnx_mask_bias", "mmcv_small", "random_5", "height_one"}  # masked
    assert all(r.diagnosis.cause == "mask_ignored" for r in failed.values())


def test_check_float32_outputs_and_missing_files(golden, tmp_path, capsys):
    outputs = str(tmp_path / "f32")
    write_outputs(golden, outputs, lambda *a: refdcn.deform_conv2d(*a, backend="numpy"),
                  dtype=np.float32)
    os.remove(os.path.join(outputs, "random_5.npy"))
    report = vectors.check(golden, outputs)
    assert report.dtype == "float32" and report.tolerance.uses_bounds
    status = {r.name: r.status for r in report.results}
    assert status.pop("random_5") == "missing"
    assert set(status.values()) == {"pass"}
    assert report.exit_code() == 1                  # a case that was never checked fails
    code, out, _ = run_check([golden, outputs], capsys)
    assert code == 1 and f"{len(CASES) - 1}/{len(CASES)} cases pass (1 missing)" in out
    assert "missing outputs: random_5" in out
    code, out, _ = run_check([golden, outputs, "--allow-missing"], capsys)
    assert code == 0 and "missing outputs (allowed): random_5" in out


def test_check_single_npz_file(golden, tmp_path):
    path = str(tmp_path / "all.npz")
    arrays = {}
    for name, entry in entries(golden).items():
        case, _ = vectors.load_case(golden, entry)
        arrays[name] = refdcn.deform_conv2d(*case.args(), backend="numpy")
    arrays["mmcv_small"] = arrays["mmcv_small"] * 1.001
    np.savez(path, **arrays)
    report = vectors.check(golden, path)
    assert {r.name for r in report.results if r.status == "fail"} == {"mmcv_small"}


@pytest.mark.parametrize("argv, words", [
    (["/nonexistent_dir_xyz", "/tmp"], ["not a directory"]),
    (["{golden}", "/nonexistent_out_xyz"], ["do not exist"]),
    (["{golden}", "{empty}"], ["no outputs found"]),
    (["{empty}", "{empty}"], ["manifest.json"]),
])
def test_check_usage_errors(golden, tmp_path, capsys, argv, words):
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    argv = [a.format(golden=golden, empty=empty) for a in argv]
    code, _, err = run_check(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    for w in words:
        assert w in err


def test_vectors_without_action_is_a_usage_error(capsys):
    assert cli.main(["vectors"]) == 2


def test_check_needs_every_quantity(golden, tmp_path, capsys):
    """An .npz with only grad_weight, or without one gradient the case defines, is an error."""
    outputs = str(tmp_path / "partial")
    write_outputs(golden, outputs, lambda *a: refdcn.deform_conv2d(*a, backend="numpy"),
                  gradients=True)
    path = os.path.join(outputs, "onnx_mask_bias.npz")
    with np.load(path) as data:
        arrays = dict(data)
    np.savez(path, grad_weight=arrays["grad_weight"])
    path = os.path.join(outputs, "random_5.npz")
    with np.load(path) as data:
        arrays = {k: v for k, v in data.items() if k != "grad_mask"}
    np.savez(path, **arrays)
    report = vectors.check(golden, outputs)
    by_name = {r.name: r for r in report.results}
    assert by_name["onnx_mask_bias"].status == "error"
    assert by_name["onnx_mask_bias"].cause == "missing_quantity"
    assert by_name["onnx_mask_bias"].error.startswith("output is missing")
    assert by_name["random_5"].status == "error" and "grad_mask is missing" in \
        by_name["random_5"].error
    assert report.exit_code() == 1


def test_check_complex_outputs_are_errors(golden, tmp_path):
    outputs = str(tmp_path / "complex")
    write_outputs(golden, outputs, lambda *a: refdcn.deform_conv2d(*a, backend="numpy") + 0j)
    report = vectors.check(golden, outputs, dtype="float64")
    assert {r.status for r in report.results} == {"error"}
    assert {r.cause for r in report.results} == {"complex_output"}


@pytest.mark.parametrize("damage", ["truncate_output", "garbage_output", "no_case_file",
                                    "truncate_case", "bad_manifest"])
def test_check_malformed_files_are_data_errors(golden, tmp_path, capsys, damage):
    import shutil
    gold = str(tmp_path / "gold")
    shutil.copytree(golden, gold)
    outputs = str(tmp_path / "out")
    write_outputs(gold, outputs, lambda *a: refdcn.deform_conv2d(*a, backend="numpy"),
                  gradients=True)
    target = {"truncate_output": os.path.join(outputs, "random_5.npz"),
              "garbage_output": os.path.join(outputs, "mmcv_small.npz"),
              "no_case_file": os.path.join(gold, entries(gold)["random_5"]["file"]),
              "truncate_case": os.path.join(gold, entries(gold)["mmcv_small"]["file"]),
              "bad_manifest": os.path.join(gold, vectors.MANIFEST)}[damage]
    if damage == "no_case_file":
        os.remove(target)
    elif damage.startswith("garbage"):
        with open(target, "wb") as f:
            f.write(b"not a zip file at all")
    elif damage == "bad_manifest":
        with open(target, "w") as f:
            f.write('{"format": "refdcn-golden-vectors", "cases": [')
    else:
        with open(target, "rb") as f:
            data = f.read()
        with open(target, "wb") as f:
            f.write(data[:len(data) // 2])
    code, out, err = run_check([gold, outputs], capsys)
    assert code == 3, (out, err)
    assert len(err.strip().splitlines()) == 1 and "data error" in err and "Traceback" not in err
