"""The DCNv3/DCNv4 verifier names each known mistake; golden vectors round-trip."""

import json
import os

import numpy as np
import pytest

from refdcn import conformance_dcnv34 as conf, vectors_dcnv34
from refdcn.cli import main
from refdcn.verify import dcnv34 as v

HERE = os.path.dirname(__file__)


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(HERE)


def _report(spec, op="dcnv3", backward=None, cases=None, **kw):
    return v.verify(v.resolve(spec, op, backward), op, cases, **kw)


@pytest.mark.parametrize("op", conf.OPS)
def test_refdcn_backends_pass_every_case(op):
    report = _report("refdcn:numba", op)
    assert report.exit_code() == 0, v.format_text(report)
    assert len(report.results) == len(conf.CASES) and report.gradients


@pytest.mark.parametrize("spec, op, cause, cases", [
    ("broken_dcnv34:yx_pairs", "dcnv3", "yx_pairs", ["groups_nonsquare", "random_1"]),
    ("broken_dcnv34:row_major_taps", "dcnv3", "row_major_taps", ["groups_nonsquare", "random_1"]),
    ("broken_dcnv34:softmax_applied", "dcnv3", "softmax_applied", ["mask_not_softmax"]),
    ("broken_dcnv34:scale_offsets_only", "dcnv3", "scale_offsets_only", ["offset_scale_2"]),
    ("broken_dcnv34:packed_no_padding", "dcnv4", "packed_no_padding", ["packed_padding"]),
])
def test_each_known_mistake_is_named(spec, op, cause, cases):
    report = _report(spec, op, cases=conf.select(cases))
    assert report.exit_code() == 1
    for r in report.results:
        assert r.status == "fail" and r.causes == [cause], (r.name, r.causes, r.where)
        assert r.where, r.name
    assert "explained by" in v.format_text(report)


def test_gradient_convention_is_named():
    report = _report("broken_dcnv34:correct", "dcnv3", "broken_dcnv34:torchvision_gradient",
                     cases=conf.select(["border_exact", "zero_offsets", "random_0"]))
    by_name = {r.name: r for r in report.results}
    assert by_name["random_0"].status == "pass"
    for name in ("border_exact_y", "border_exact_x", "zero_offsets_pad1"):
        assert by_name[name].causes == ["convention"], by_name[name].where
        assert any("exactly on" in line for line in by_name[name].where)


def test_float32_run_of_a_correct_implementation_passes():
    report = _report("refdcn:numba", "dcnv4", dtype=np.float32,
                     cases=conf.select(["packed_padding", "border_bands", "random_2"]))
    assert report.exit_code() == 0, v.format_text(report)


def test_cli_verify_op(capsys):
    assert main(["verify", "--op", "dcnv4", "refdcn:numba", "--case", "packed"]) == 0
    assert "packed_padding" in capsys.readouterr().out
    assert main(["verify", "--op", "dcnv3", "broken_dcnv34:yx_pairs", "--case", "random_1",
                 "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["cases"][0]["causes"] == ["yx_pairs"]
    assert main(["verify", "--op", "dcnv3", "nope"]) == 2
    assert main(["verify", "--op", "dcnv3", "refdcn:numba", "--case", "zzz"]) == 2


@pytest.mark.parametrize("op", conf.OPS)
def test_vectors_export_and_check_round_trip(tmp_path, op, capsys):
    cases = conf.select(["packed_padding", "border_exact_y", "remove_center_3x3"])
    manifest = vectors_dcnv34.export(str(tmp_path), op, cases)
    assert manifest["operator"].startswith(op) and len(manifest["cases"]) == 3
    # a program's outputs: refdcn's own results, written as the check expects
    out = tmp_path / "outputs"
    out.mkdir()
    for entry in manifest["cases"]:
        with np.load(tmp_path / entry["file"]) as data:
            np.save(out / f"{entry['name']}.npy", data["output"])
    report = vectors_dcnv34.check(str(tmp_path), str(out))
    assert report.exit_code() == 0
    np.save(out / "packed_padding.npy", np.load(out / "packed_padding.npy") * 1.001)
    assert vectors_dcnv34.check(str(tmp_path), str(out)).exit_code() == 1
    # the expected values are the stored ones: altering them makes a correct output fail
    entry = manifest["cases"][1]
    with np.load(tmp_path / entry["file"]) as data:
        arrays = dict(data)
    arrays["output"] = arrays["output"] + 1.0
    np.savez(tmp_path / entry["file"], **arrays)
    report = vectors_dcnv34.check(str(tmp_path), str(out), names=[entry["name"]])
    assert report.exit_code() == 1
    # float32 outputs are judged by the stored float32 expectations and bounds
    for e in manifest["cases"][2:]:
        with np.load(tmp_path / e["file"]) as data:
            np.save(out / f"{e['name']}.npy", data["f32_output"].astype(np.float32))
    assert vectors_dcnv34.check(str(tmp_path), str(out), names=[manifest["cases"][2]["name"]]
                                ).exit_code() == 0


def test_onnx_layout_is_a_valid_custom_domain_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    manifest = vectors_dcnv34.export(str(tmp_path), "dcnv3", conf.select("remove_center_3x3"))
    entry = manifest["cases"][0]
    model = onnx.load(str(tmp_path / entry["onnx"] / "model.onnx"))
    onnx.checker.check_model(model)
    node = model.graph.node[0]
    assert (node.domain, node.op_type) == ("mmdeploy", "TRTDCNv3")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["remove_center"] == 1 and attrs["kernel_h"] == 3
    with open(tmp_path / entry["onnx"] / "test_data_set_0" / "output_0.pb", "rb") as f:
        y = numpy_helper.to_array(onnx.TensorProto.FromString(f.read()))
    np.testing.assert_array_equal(y, conf.expected("remove_center_3x3", "dcnv3")["output"])


def test_cli_vectors_op(tmp_path, capsys):
    assert main(["vectors", "export", "--op", "dcnv4", str(tmp_path), "--case", "packed",
                 "--no-onnx"]) == 0
    assert "1 dcnv4 cases" in capsys.readouterr().out
    out = tmp_path / "out"
    out.mkdir()
    with np.load(tmp_path / "cases" / "packed_padding.npz") as data:
        np.savez(out / "packed_padding.npz", output=data["output"],
                 grad_input=data["grad_input"], grad_offset_mask=data["grad_offset_mask"])
    assert main(["vectors", "check", "--op", "dcnv4", str(tmp_path), str(out)]) == 0
    assert main(["vectors", "check", "--op", "dcnv3", str(tmp_path), str(out)]) == 2


def test_cli_vectors_check_malformed_manifest_exits_3(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    (tmp_path / "out").mkdir()
    assert main(["vectors", "check", "--op", "dcnv3", str(tmp_path), str(tmp_path / "out")]) == 3
