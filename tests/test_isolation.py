"""The verifier runs user code in a child process: nothing it does ends or corrupts the run."""

import json

import pytest

import hostile_impls  # noqa: F401 - loaded by name in the child
from refdcn import cli, conformance
from refdcn.verify import AdapterUnavailable, verify
from refdcn.verify.isolation import Isolated

CASES = ["onnx_mask_bias", "random_0"]


def cases(names=CASES):
    return [conformance.get_case(n) for n in names]


@pytest.mark.parametrize("name, cause, words", [
    ("hangs", "timeout", "no result within 2 s"),
    ("segfaults", "crash", "SIGSEGV"),
    ("calls_sys_exit", "exit", "sys.exit(0)"),
    ("calls_os_exit", "exit", "exited with status 0"),
    ("complex_output", "complex_output", "complex"),
    ("all_nan", "non_finite", "non-finite"),
    ("strings", "not_numeric", "dtype <U1"),
])
def test_every_misbehaviour_is_an_error_row_and_the_run_goes_on(name, cause, words):
    impl = Isolated(f"hostile_impls:{name}", timeout=2)
    try:
        report = verify(impl, cases())
    finally:
        impl.close()
    assert [r.status for r in report.results] == ["error", "error"]      # the run went on
    for r in report.results:
        assert r.cause == cause and words in r.error, (r.cause, r.error)
    assert report.exit_code() == 1
    assert report.causes() == {cause: CASES}


def test_non_finite_output_fails_under_any_rtol(capsys):
    code = cli.main(["verify", "hostile_impls:all_nan", "--case", "random_0", "--rtol", "inf",
                     "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["cases"][0]["cause"] == "non_finite"


def test_prints_never_reach_the_json(capsys):
    code = cli.main(["verify", "hostile_impls:prints", "--case", "onnx_mask_bias", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["summary"]["passed"] == 1
    # in process too (prints are redirected to stderr around every call)
    code = cli.main(["verify", "hostile_impls:prints", "--case", "onnx_mask_bias", "--json",
                     "--in-process"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["summary"]["passed"] == 1
    assert "must not reach" in err


def test_an_import_that_exits_is_a_usage_error(capsys):
    with pytest.raises(AdapterUnavailable, match="exited with status 0 during the import"):
        Isolated("exits_at_import:deform_conv2d", timeout=30)
    code = cli.main(["verify", "exits_at_import:deform_conv2d"])
    assert code == 2 and "exited with status 0" in capsys.readouterr().err


def test_a_stateful_implementation_is_not_repeatable():
    """A reused, never-zeroed output buffer: the identical second call differs."""
    impl = Isolated("hostile_impls:stateful", timeout=30)
    try:
        # the first call of an output shape is right, every later call of that shape is wrong;
        # mask_outside_unit and kernel_1x1 have batch 2, where a batch-split check would
        # otherwise compare two different runs and blame the split
        report = verify(impl, cases(["zero_offsets_conv2d", "mask_outside_unit", "kernel_1x1"]))
    finally:
        impl.close()
    assert [r.status for r in report.results] == ["pass", "fail", "fail"]
    for r in report.results[1:]:
        assert r.diagnosis.causes == ["not_repeatable"], r.diagnosis.lines()
        assert "an identical call gave a different result" in "\n".join(r.diagnosis.lines())
    assert set(report.causes()) == {"not_repeatable"}


def test_unsupported_cases_are_neither_errors_nor_failures():
    from refdcn.verify.adapters import Implementation
    from refdcn.verify.runner import Report

    class NoMask(Implementation):
        name = "no-mask"

        def unsupported(self, case):
            return "no mask here" if case.mask is not None else ""

        def forward(self, case):
            import refdcn
            return refdcn.deform_conv2d(*case.args(), backend="numpy")

    report = verify(NoMask(), cases(["onnx_with_padding", "onnx_mask_bias"]))
    assert [r.status for r in report.results] == ["pass", "unsupported"]
    assert report.results[1].error == "no mask here" and report.exit_code() == 0
    assert report.to_json()["summary"]["unsupported"] == 1
    # nothing checked at all is not a pass
    only = verify(NoMask(), cases(["onnx_mask_bias"]))
    assert only.exit_code() == 1
    assert Report("x", "", "float64", "torchvision", None, False).exit_code() == 0
