"""``refdcn verify``: passes real implementations, diagnoses broken ones, exit codes, JSON."""

import doctest
import json
import os

import numpy as np
import pytest

import broken_impls  # noqa: F401 - the implementations below are loaded by name
from refdcn import backends, cli, conformance, layouts, vectors
from refdcn import verify as verify_package
from refdcn.verify import diagnosis, runner, variants
from refdcn.verify import AdapterUnavailable, Tolerance, resolve, verify, verify_implementation
from refdcn.verify.diagnosis import axis_class, describe_point
from refdcn.verify.report import format_json, format_text

#: A quick subset touching every kind of case: borders, groups, batch > 1, H = 1, mask, bias.
SUBSET = ["onnx_mask_bias", "onnx_offset_groups", "torchvision_awkward_batch1", "mmcv_small",
          "border_exact_y", "border_bands", "integer_offsets", "height_one", "kernel_2x3",
          "random_5"]


def cases(names):
    return [conformance.get_case(n) for n in names]


def assert_all_pass(report):
    failures = [(r.name, r.status, r.error) for r in report.results if r.status != "pass"]
    assert not failures, format_text(report)
    assert report.exit_code() == 0


# --- real implementations pass ---------------------------------------------------------------------

def backends_to_check():
    """Every available backend; "cuda" only on a real GPU (the simulator is far too slow)."""
    names = backends.available()
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    return [b for b in names if b != "cuda" or not simulated]


@pytest.mark.parametrize("backend", backends_to_check())
def test_refdcn_backends_pass(backend):
    assert_all_pass(verify(resolve(f"refdcn:{backend}"), cases(SUBSET)))


@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
def test_refdcn_backend_either_convention(convention):
    report = verify(resolve("numpy"), cases(["mmcv_small", "border_exact_x"]),
                    convention=convention)
    assert report.convention == convention
    assert_all_pass(report)


def test_refdcn_float32_passes_derived_bounds():
    report = verify(resolve("refdcn:numpy"), cases(SUBSET), dtype=np.float32)
    assert report.tolerance.uses_bounds
    assert_all_pass(report)


def test_torchvision_passes():
    pytest.importorskip("torchvision")
    report = verify(resolve("torchvision"), cases(SUBSET + ["torchvision_awkward_batch0",
                                                            "width_one"]))
    assert report.gradients
    assert_all_pass(report)


def test_onnxruntime_passes():
    pytest.importorskip("onnxruntime")
    for opset in (19, 22):
        report = verify(resolve("onnxruntime", opset=opset), cases(SUBSET))
        assert not report.gradients
        assert_all_pass(report)


def test_the_toy_implementation_is_correct():
    # the deliberately broken implementations below differ from this one by one bug each
    assert_all_pass(verify(resolve("broken_impls:correct"), cases(SUBSET)))


# --- broken implementations: failure and the right diagnosis -----------------------------------------

BROKEN = {      # bug -> (cases where it shows, expected first cause)
    # (not onnx_without_padding: on its linear input arange(9) the planar misreading happens
    # to give the same sum)
    "planar": (["random_5", "kernel_2x3", "integer_offsets"], "planar"),
    "xy_pairs": (["onnx_without_padding", "random_5"], "xy_pairs"),
    "dcnv4": (["onnx_offset_groups", "random_5", "kernel_2x3"], "dcnv4"),
    "float32_coords": (["onnx_without_padding", "random_5"], "float32_coordinates"),
    "centre_shift": (["kernel_4x4", "kernel_1x1"], "centre_shift"),
    "edge_clamp": (["onnx_without_padding", "kernel_1x1", "random_0"], "edge_clamp"),
    "mask_ignored": (["onnx_mask_bias", "random_5"], "mask_ignored"),
    "kh_index": (["kernel_2x3"], "kh_index"),
    "bias_dropped": (["onnx_mask_bias", "random_3"], "bias_dropped"),
    "batch_block": (["random_0", "torchvision_awkward_batch37"], "batch_split"),
    # rules found in real implementations (dcn-implementations.md, peers.md)
    "msra_v1": (["border_bands", "random_0", "torchvision_awkward_batch37"], "msra_v1_border"),
    "tvm": (["border_bands", "random_1"], "tvm_border"),
    "clamp": (["onnx_with_padding", "random_2"], "clamp_to_edge"),
    "mask_sigmoid": (["onnx_mask_bias", "random_5"], "mask_sigmoid"),
    "mask_softmax": (["onnx_mask_bias", "random_5"], "mask_softmax"),
    "float32_compute": (["onnx_with_padding", "random_3", "torchvision_awkward_batch1"],
                        "computes_in_float32"),
}


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_broken_implementation_is_diagnosed(bug):
    names, cause = BROKEN[bug]
    report = verify(resolve(f"broken_impls:{bug}"), cases(names))
    assert report.exit_code() == 1
    for r in report.results:
        assert r.status == "fail", (r.name, r.status, r.error)
        assert r.diagnosis.cause == cause, (r.name, r.diagnosis.lines())
    text = format_text(report)
    title = {"batch_split": "depends on how the batch is split",
             "computes_in_float32": "computes in float32"}.get(cause, "explained by")
    assert title in text


def test_the_bugs_are_told_apart():
    """Each broken implementation's failures are explained by its own bug only."""
    for bug, (names, cause) in BROKEN.items():
        if cause in ("batch_split", "dcnv4", "xy_pairs"):
            continue        # (dx, dy) and DCNv4 coincide for 1-wide kernels; see above
        report = verify(resolve(f"broken_impls:{bug}"), cases(names))
        assert set(report.causes()) <= {cause, "float32_rounded"}, (bug, report.causes())


@pytest.mark.parametrize("bug, attribute", [("stride_w_rows", "stride_h != stride_w"),
                                            ("dilation_h_cols", "dilation_h != dilation_w"),
                                            ("bias_twice", "groups > 1 and a bias")])
def test_what_unexplained_failures_have_in_common(bug, attribute):
    """Bugs no variant names: the report says which attributes separate failing cases."""
    report = verify(resolve(f"broken_impls:{bug}"), conformance.CASES)
    assert report.exit_code() == 1 and report.causes() == {}
    common = report.common
    assert common is not None and common.exact
    for terms in [common.terms] + common.alternatives:
        assert attribute in " and ".join(terms), common.text()
    assert "fails exactly when the case has" in format_text(report)
    assert json.loads(format_json(report))["summary"]["common"]["exact"] is True


def test_nothing_in_common_is_claimed_when_every_failure_is_explained():
    report = verify(resolve("broken_impls:planar"), conformance.CASES)
    assert report.common is None


def test_gradient_convention_of_torchvision_is_recognised():
    pytest.importorskip("torchvision")
    report = verify(resolve("torchvision"), cases(["mmcv_small", "border_exact_y"]),
                    convention="mmcv")
    assert report.notes and "torchvision offset-gradient convention" in report.notes[0]
    for r in report.results:
        assert r.status == "fail"
        assert [q for q, m in r.measures.items() if not m.ok] == ["offset"]
        assert r.diagnosis.cause == "convention"
    # the location: the worst offset gradient is a tap exactly on y = -1
    text = format_text(report)
    assert "exactly on y = -1" in text


def test_gradient_convention_via_backward_callable():
    impl = resolve("broken_impls:correct", backward="broken_impls:mmcv_gradients")
    report = verify(impl, cases(["integer_offsets", "onnx_mask_bias"]))
    by_name = {r.name: r for r in report.results}
    assert by_name["onnx_mask_bias"].status == "pass"        # nothing lands on -1 there
    assert by_name["integer_offsets"].status == "fail"
    assert by_name["integer_offsets"].diagnosis.cause == "convention"
    assert "computes the mmcv offset-gradient convention" in report.notes[0]
    # and the same callable passes when the mmcv rule is what is asked for, with no note
    # claiming it computes another convention (the note is computed, not assumed)
    report = verify(impl, cases(["integer_offsets", "mmcv_small"]), convention="mmcv")
    assert_all_pass(report)
    assert report.notes == []


def test_backward_mapping_with_grad_keys():
    impl = resolve("broken_impls:correct", backward="broken_impls:torchvision_gradients_mapping")
    assert_all_pass(verify(impl, cases(["onnx_mask_bias", "random_5"])))


# --- the ONNX reference evaluator: ~1e-7 accurate, crashes on H = 1 ------------------------------------

def test_onnx_reference_is_reported_not_fatal():
    pytest.importorskip("onnx")
    report = verify(resolve("onnx-reference"),
                    cases(["mmcv_small", "onnx_without_padding", "height_one", "random_3"]))
    by_name = {r.name: r for r in report.results}
    assert by_name["mmcv_small"].status == "pass"           # exact coordinates: exact results
    assert by_name["height_one"].status == "error"
    assert "NaN" in by_name["height_one"].error
    assert any("H = 1" in n for n in by_name["height_one"].diagnosis.notes)
    for name in ("onnx_without_padding", "random_3"):
        r = by_name[name]
        assert r.status == "fail" and r.measures["output"].rel_error < 1e-5
        assert "float32_rounded" in r.diagnosis.explained_by
    assert report.exit_code() == 1
    # with a tolerance that admits float32 coordinates only the H = 1 crash remains
    loose = verify(resolve("onnx-reference"), cases(["random_3", "height_one"]),
                   tolerance=Tolerance(np.float64, rtol=1e-5))
    assert [r.status for r in loose.results] == ["pass", "error"]


def test_error_rows_do_not_stop_the_run():
    report = verify(resolve("broken_impls:raises"), cases(["onnx_mask_bias", "mmcv_small"]))
    assert [r.status for r in report.results] == ["error", "error"]
    assert report.results[0].error == "RuntimeError: this implementation always fails"
    assert "ERROR" in format_text(report)


# --- diagnosis details ----------------------------------------------------------------------------

def test_axis_classes():
    assert axis_class(-1.0, 4, "y") == (3, "exactly on y = -1")
    assert axis_class(4.0, 4, "y") == (3, "exactly on y = H = 4")
    assert axis_class(-0.5, 4, "x")[1] == "in the band -1 < x < 0"
    assert axis_class(3.5, 4, "x")[1] == "in the band W-1 < x < W"
    assert axis_class(0.0, 4, "y")[1] == "on the grid line y = 0 (first row)"
    assert axis_class(3.0, 4, "x")[1] == "on the grid line x = 3 (last column)"
    assert axis_class(-7.0, 4, "y")[0] == 4 and axis_class(float("nan"), 4, "y")[0] == 5
    assert describe_point(1.5, 2.5, 4, 4) == (0, "inside")
    assert describe_point(-1.0, 4.5, 4, 5)[1] == "exactly on y = -1, in the band W-1 < x < W"


def test_location_of_the_worst_output_element():
    report = verify(resolve("broken_impls:edge_clamp"), cases(["onnx_without_padding"]))
    where = report.results[0].diagnosis.locations[0]
    # output (1, 1) of the 2x2 kernel reads row 2 = H-1 and column 2 = W-1: doubled by the clamp
    assert where[0].startswith("output: worst element output[n=0, c=0, y=1, x=1]")
    assert "expected 24, got" in where[0]
    assert where[1] == "  its 4 taps: 4 on a grid line"


# --- the command line -----------------------------------------------------------------------------

def run_cli(argv, capsys):
    code = cli.main(["verify"] + argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_0_and_table(capsys):
    code, out, _ = run_cli(["refdcn:numpy", "--case", "onnx", "--case", "mmcv"], capsys)
    assert code == 0
    assert "5/5 cases pass" in out and "onnx_mask_bias" in out and "abs/rel" in out


def test_cli_exit_1_with_diagnosis(capsys):
    code, out, _ = run_cli(["broken_impls:planar", "--case", "random_5"], capsys)
    assert code == 1
    assert "FAIL" in out and "explained by: offsets read as planar" in out


def test_cli_json(capsys):
    code, out, _ = run_cli(["broken_impls:bias_dropped", "--case", "onnx_mask_bias", "--case",
                            "border_bands", "--json"], capsys)
    assert code == 1
    data = json.loads(out)
    assert data["summary"]["exit_code"] == 1 and data["summary"]["passed"] == 1
    failed = [c for c in data["cases"] if c["status"] == "fail"]
    assert failed[0]["name"] == "onnx_mask_bias"
    assert failed[0]["diagnosis"]["cause"] == "bias_dropped"
    assert failed[0]["quantities"]["output"]["ok"] is False
    assert data["summary"]["causes"] == {"bias_dropped": ["onnx_mask_bias"]}


def test_cli_float32_and_rtol(capsys):
    code, out, _ = run_cli(["numpy", "--case", "random_1", "--dtype", "float32"], capsys)
    assert code == 0 and "worst/bound" in out
    code, out, _ = run_cli(["broken_impls:float32_coords", "--case", "random_1", "--rtol",
                            "1e-5"], capsys)
    assert code == 0


@pytest.mark.parametrize("argv, words", [
    (["no_such_impl"], ["unknown implementation", "torchvision"]),
    (["no_such_module_xyz:f"], ["cannot import module", "no_such_module_xyz"]),
    (["broken_impls:nothing_here"], ["has no attribute"]),
    (["broken_impls:BUGS"], ["not a callable"]),
    (["broken_impls:wrong_signature"], ["signature", "(input, offset)"]),
    (["broken_impls:correct", "--backward", "broken_impls:wrong_signature"], ["--backward"]),
    (["torchvision", "--backward", "broken_impls:mmcv_gradients"], ["--backward"]),
    (["refdcn:nonexistent"], ["unknown refdcn backend"]),
    (["numpy", "--case", "zzz_no_case"], ["no conformance case"]),
    ([], ["IMPL is required"]),
])
def test_cli_usage_errors_exit_2(argv, words, capsys):
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err           # one line, no traceback
    for w in words:
        assert w in err


def test_mmcv_adapter_says_how_to_install(capsys):
    try:
        import mmcv.ops  # noqa: F401
        pytest.skip("mmcv is installed here")
    except ImportError:
        pass
    with pytest.raises(AdapterUnavailable, match="mim install mmcv"):
        resolve("mmcv")
    code, _, err = run_cli(["mmcv"], capsys)
    assert code == 2 and "not installed" in err


def test_cli_list(capsys):
    code, out, _ = run_cli(["--list"], capsys)
    assert code == 0
    assert "torchvision_awkward_batch37" in out and "onnx-reference" in out


def test_verify_implementation_helper():
    report = verify_implementation("refdcn:reference", case="onnx_with_padding")
    assert report.exit_code() == 0 and len(report.results) == 1
    assert json.loads(format_json(report))["summary"]["passed"] == 1


@pytest.mark.parametrize("module", [verify_package, runner, diagnosis, variants, layouts,
                                    conformance, vectors], ids=lambda m: m.__name__)
def test_doctests(module):
    failures, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_wrong_shapes_and_wrong_gradient_results_are_reported():
    report = verify(resolve("broken_impls:wrong_shape"), cases(["onnx_mask_bias"]))
    r = report.results[0]
    # a shape error: named with both shapes, never as a number
    assert r.status == "error" and r.cause == "wrong_shape"
    assert r.error == "output has shape (1, 1, 2, 1); expected (1, 1, 2, 2)"
    assert report.causes() == {"wrong_shape": ["onnx_mask_bias"]}
    assert "output has shape (1, 1, 2, 1); expected (1, 1, 2, 2)" in format_text(report)
    assert "inf" not in format_text(report)
    impl = resolve("broken_impls:correct", backward="broken_impls:four_gradients")
    r = verify(impl, cases(["onnx_mask_bias"])).results[0]
    assert r.status == "error" and "returned 4 values; expected 5" in r.error
