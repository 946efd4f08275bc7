"""``refdcn bench``: the command runs end to end and prints (and saves) every column."""

import json

import numpy as np
import pytest

from refdcn import backends
from refdcn.benchmarks import cpu
from refdcn.cli import main

TINY = "1,4,4,6,6,3"
COLUMNS = ("fwd ms", "fwd+bwd ms", "GFLOP/s", "% matmul", "peak MiB", "x tv fwd", "x tv f+b",
           "x ort fwd")


def test_quick_bench_through_the_cli(capsys, tmp_path):
    path = tmp_path / "bench.json"
    status = main(["bench", "--quick", "--backend", "numpy", "--shape", TINY, "--repeats", "2",
                   "--warmup", "0", "--no-baselines", "--json", str(path)])
    assert status == 0
    out = capsys.readouterr().out
    for column in COLUMNS:
        assert column in out
    assert "matmul (2048x2048" in out
    rows = [line for line in out.splitlines() if line.startswith("1,4,4,6x6,3")]
    assert len(rows) == 1 and rows[0].split()[1] == "numpy"
    record = json.loads(path.read_text())
    (row,) = record["rows"]
    assert row["backend"] == "numpy" and tuple(row["shape"]) == (1, 4, 4, 6, 6, 3)
    assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0
    assert row["peak_mib"] > 0 and 0 < row["percent_of_matmul"]
    assert row["vs_torchvision_forward"] is None      # --no-baselines


def test_ratios_against_the_peers_are_peer_time_over_ours():
    pytest.importorskip("torchvision")
    settings = cpu.Settings(shapes=[(1, 4, 4, 6, 6, 3)], backends=["numpy"], repeats=2,
                            warmup=0, threads=1)
    notes = {}
    rows = {r.backend: r for r in cpu.bench_shape((1, 4, 4, 6, 6, 3), settings, notes)}
    assert "torchvision" in rows
    ours, tv = rows["numpy"], rows["torchvision"]
    assert ours.vs_torchvision_forward == pytest.approx(tv.forward_ms / ours.forward_ms)
    assert ours.vs_torchvision_forward_backward == pytest.approx(
        tv.forward_backward_ms / ours.forward_backward_ms)
    if "onnxruntime" in rows:
        assert rows["onnxruntime"].forward_backward_ms is None
        assert ours.vs_onnxruntime_forward == pytest.approx(
            rows["onnxruntime"].forward_ms / ours.forward_ms)
    else:
        assert "onnxruntime" in notes


def test_bench_inputs_follow_the_baseline_recipe():
    case = cpu.make_inputs((2, 3, 5, 7, 6, 3), "float32", modulated=True)
    assert case.input.shape == (2, 3, 7, 6) and case.input.dtype == np.float32
    assert case.offset.shape == (2, 18, 7, 6) and case.mask.shape == (2, 9, 7, 6)
    assert ((case.mask > 0) & (case.mask < 1)).all()
    assert cpu.make_inputs((1, 2, 2, 4, 4, 3), "float64", modulated=False).mask is None


def test_default_backends_exclude_reference_and_gpu():
    names, skipped = cpu.default_backends()
    assert "numpy" in names
    assert names == [b for b in backends.available() if backends.capabilities(b).device == "cpu"
                     and not backends.capabilities(b).oracle]
    assert set(names) | set(skipped) <= set(backends.REGISTRY)


@pytest.mark.parametrize("argv, message", [
    (["--backend", "nonsense"], "unknown backend"),
    (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    assert main(["bench", "--no-baselines", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_shape_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--shape", "1,2,3"])
    assert exc.value.code == 2
    assert "six positive integers" in capsys.readouterr().err


def test_cuda_without_a_gpu_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert main(["bench", "--backend", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0]


def test_beside_times_each_context_in_its_own_process(capsys, tmp_path):
    """``--beside``: 'alone' and the context side by side, each from a fresh process."""
    path = tmp_path / "beside.json"
    status = main(["bench", "--backend", "numpy", "--shape", TINY, "--repeats", "1",
                   "--warmup", "0", "--beside", "numba-threads", "--json", str(path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "forward ms (x alone)" in out and "forward+backward ms (x alone)" in out
    header = next(line for line in out.splitlines() if line.startswith("shape"))
    assert header.split()[-2:] == ["alone", "numba-threads"]
    record = json.loads(path.read_text())
    assert set(record["contexts"]) == {"alone", "numba-threads"}
    for context in record["contexts"].values():
        (row,) = context["rows"]
        assert row["backend"] == "numpy" and row["forward_ms"] > 0


@pytest.mark.parametrize("name", ["torch", "openvino"])
def test_beside_contexts_set_up_with_the_installed_library(name):
    """The torch and openvino contexts run their library once in this process (the API each
    uses exists in the installed version: OpenVINO 2026 removed ``openvino.runtime``)."""
    pytest.importorskip(name)
    from refdcn.benchmarks import contexts
    assert contexts.context_available(name) is None
    contexts.enter_context(name, 1)
    if name == "openvino":
        assert contexts._openvino_model is not None


def test_profile_times_the_steps_without_changing_the_result():
    """``--profile``'s timed kernel set computes the same bits, and counts every GEMM FLOP."""
    from refdcn import driver
    from refdcn.benchmarks import profile
    from refdcn.geometry import check_arguments
    case = cpu.make_inputs((2, 4, 6, 7, 5, 3), "float64", modulated=True)
    geom = check_arguments(*case.args())
    args = (case.input, case.offset, case.mask, case.weight, case.bias, geom, np.float64)
    for name in cpu.default_backends()[0]:
        kernels = profile.kernel_set(name)
        if kernels is None:
            continue
        clock = profile.StepClock()
        timed = profile.timed_kernels(kernels, clock)
        assert np.array_equal(driver.forward(timed, *args), driver.forward(kernels, *args))
        assert clock.gemm_flops == geom.flops()          # forward: exactly the convolution
        assert {"im2col", "GEMM", "alloc", "bias"} <= set(clock.seconds), name
        clock.reset()
        driver.backward(timed, case.grad_output, *args, 0)
        assert {"im2col", "GEMM", "col2im", "coordinate gradients"} <= set(clock.seconds)
        assert clock.gemm_flops == 2 * geom.flops()      # weight and column gradients


def test_profile_table_through_the_cli(capsys):
    assert main(["bench", "--profile", "--backend", "numpy", "--shape", TINY, "--repeats", "2",
                 "--warmup", "0", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("1,4,4,6x6,3")]
    assert len(rows) == 2 and all(r.split()[1] == "numpy" for r in rows)   # forward, backward
    for step in ("API", "im2col", "GEMM", "col2im", "coord grads", "driver"):
        assert step in out


def test_first_call_process_times_the_readme_example(tmp_path):
    """``bench --first-call``'s measuring process: a real fresh process of the numpy backend
    (no JIT) reports import <= forward <= backward, from the process start."""
    from refdcn.benchmarks import first_call
    record = first_call.measure("numpy", str(tmp_path))
    assert record["backend"] == "numpy"
    assert 0 < record["import_s"] <= record["forward_s"] <= record["backward_s"]


def test_first_call_table_and_verdict(capsys, tmp_path, monkeypatch):
    """The table has a cold and a warm row per backend, ``auto`` first (named by what it
    resolves to), and the verdict compares auto's cold first forward with the target."""
    from refdcn.benchmarks import first_call
    seen = []

    def fake(backend, cache_dir):
        seen.append((backend, cache_dir))
        cold = sum(1 for b, _ in seen if b == backend) == 1
        forward = first_call.TARGET_S + (1.0 if cold and backend == "auto" else -1.5)
        return dict(backend="numba" if backend == "auto" else backend, import_s=0.1,
                    forward_s=forward, backward_s=forward + 1)
    monkeypatch.setattr(first_call, "measure", fake)
    path = tmp_path / "first.json"
    assert main(["bench", "--first-call", "--backend", "numpy", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert [b for b, _ in seen] == ["auto", "auto", "numpy", "numpy"]
    assert seen[0][1] == seen[1][1] != seen[2][1] == seen[3][1]      # warm reuses cold's cache
    rows = [line.split()[:3] for line in out.splitlines() if line.split()[-1:] != []
            and line.split()[0] in ("auto", "numpy")]
    assert rows[:2] == [["auto", "(numba)", "cold"], ["auto", "(numba)", "warm"]]
    assert "misses the 2 s target" in out
    assert json.loads(path.read_text())["records"][0]["cache"] == "cold"
