"""The DCN ecosystem against refdcn: the real libraries where installed (their results are the
ones measured in peers.md), each peer's rule also as a NumPy model (always run).

OpenVINO is in the ``test`` extra (CI); PaddlePaddle, MindSpore and TVM take 2-4 minutes to
install, so ``scripts/peers.sh`` installs and runs them in fresh environments.
"""

import numpy as np
import pytest

from refdcn import conformance
from refdcn.verify import Tolerance, resolve, verify

ALL = conformance.CASES
#: the cases whose samples land exactly on y = -1 or x = -1 (conventions differ only there)
ON_MINUS_ONE = {"onnx_with_padding", "mmcv_small", "border_exact_y", "border_exact_x",
                "integer_offsets", "zero_offsets_conv2d"}


def statuses(report):
    out = {}
    for r in report.results:
        out.setdefault(r.status, set()).add(r.name)
    return out


def run(name, dtype=np.float64, convention=None, strict=False, cases=ALL):
    return verify(resolve(name), cases, dtype, convention,
                  Tolerance(dtype, strict=strict))


# --- OpenVINO ----------------------------------------------------------------------------------

def test_openvino_pad_true_passes_float32_and_computes_in_float32():
    pytest.importorskip("openvino")
    assert statuses(run("openvino", np.float32)) == {"pass": {c.name for c in ALL}}
    report = run("openvino")                   # float64 inputs: OpenVINO computes in float32
    assert set(report.causes()) == {"computes_in_float32"}


@pytest.mark.parametrize("name", ["openvino-opset8-nopad", "openvino-opset1"])
def test_openvino_msra_v1_rule_is_named(name):
    pytest.importorskip("openvino")
    report = run(name, np.float32)
    assert set(report.causes()) == {"msra_v1_border"}
    if name == "openvino-opset1":              # no mask: DCNv2 cases are unsupported
        assert {r.name for r in report.results if r.status == "unsupported"} == \
            {c.name for c in ALL if c.build().mask is not None}


# --- PaddlePaddle ------------------------------------------------------------------------------

def test_paddle_mmcv_convention_float64_and_float32():
    pytest.importorskip("paddle")
    assert run("paddle").exit_code() == 0                      # native: mmcv convention
    assert run("paddle", np.float32).exit_code() == 0          # the float32 tier
    report = run("paddle", convention="torchvision")
    assert statuses(report)["fail"] == ON_MINUS_ONE
    assert set(report.causes()) == {"convention"}


# --- MindSpore ---------------------------------------------------------------------------------

def test_mindspore_float32_passes_the_default_tier():
    pytest.importorskip("mindspore")
    assert run("mindspore", np.float32).exit_code() == 0
    assert len(statuses(run("mindspore", np.float32, strict=True))["fail"]) == 10  # peers.md
    float64 = run("mindspore")
    assert statuses(float64) == {"unsupported": {c.name for c in ALL}}
    assert float64.exit_code() == 1                            # nothing could be checked


# --- Apache TVM --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tvm", "tvm-compiled"])
def test_tvm_border_rule_is_named(name):
    pytest.importorskip("tvm.topi.testing")
    report = run(name)
    s = statuses(report)
    assert s["pass"] and s["fail"] and set(report.causes()) == {"tvm_border"}
    assert all("no mask" in r.error or "no conv groups" in r.error
               for r in report.results if r.status == "unsupported")
