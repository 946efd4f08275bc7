"""The "numba" backend: agreement with the loop reference, bitwise block-size
invariance, determinism and non-finite offsets.

The whole-suite agreement over random cases (hypothesis) is in test_backends.py;
here are the properties particular to this backend's design (channels-last
kernels, parallel tasks over images, pixel chunks and channel blocks).
"""

import numpy as np
import pytest

from refdcn import api, backends
from refdcn.testing import compare, make_case, reference_results

if "numba" not in backends.available():
    pytest.skip(f"numba backend unavailable: {backends.unavailable().get('numba')}",
                allow_module_level=True)

from refdcn.backends import numba_cpu  # noqa: E402
from refdcn.geometry import check_arguments  # noqa: E402

CONVENTIONS = ("torchvision", "mmcv")


@pytest.fixture(params=["parallel", "serial"])
def mode(request, monkeypatch):
    """Run the kernels' parallel versions (even on tiny cases) or their serial versions."""
    monkeypatch.setattr(numba_cpu, "SERIAL_WORK", 0 if request.param == "parallel" else 2**62)
    return request.param


def run(case, convention="torchvision", backend="numba"):
    out = api.deform_conv2d(*case.args(), backend=backend)
    grads = api.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend,
                                       convention=convention)
    return {"output": np.asarray(out), **grads._asdict()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for q in a:
        if a[q] is None:
            assert b[q] is None, q
            continue
        assert a[q].dtype == b[q].dtype, q
        assert np.array_equal(a[q], b[q], equal_nan=True), f"{q} differs"


# Offset groups that straddle convolution groups (C_in = 12, groups 3, offset groups 2),
# non-square kernel, stride/padding/dilation != 1 and different per axis.
MIXED = dict(in_channels=12, out_channels=6, height=7, width=6, kernel=(3, 2), stride=(2, 1),
             padding=(1, 2), dilation=(1, 2), groups=3, offset_groups=2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("modulated", [True, False])
def test_matches_reference(dtype, modulated, mode):
    case = make_case(seed=3, batch=2, modulated=modulated, bias=modulated, **MIXED)
    case = case.astype(dtype)
    for convention in CONVENTIONS:
        report = compare(run(case, convention), reference_results(case, convention), case, dtype)
        bad = {q: r for q, r in report.items() if not r[0]}
        assert not bad, f"{convention}: {bad}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_integer_offsets_on_grid_lines_and_borders(dtype, mode):
    """Samples exactly on grid lines, on y = -1 / x = -1 and on y = H (the convention cases)."""
    case = make_case(seed=5, batch=1, in_channels=4, out_channels=2, height=4, width=5,
                     kernel=(2, 3), padding=2, groups=1, offset_groups=2, offsets="integer",
                     offset_scale=3).astype(dtype)
    for convention in CONVENTIONS:
        report = compare(run(case, convention), reference_results(case, convention), case, dtype)
        assert all(r[0] for r in report.values()), (convention, report)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_block_size_invariance(dtype, mode):
    """Blocks of 1, 7 and the whole (prime) batch give bitwise identical results."""
    case = make_case(seed=11, batch=11, **MIXED).astype(dtype)
    geom = check_arguments(*case.args())
    args = (case.input, case.offset, case.mask, case.weight, case.bias, geom, np.dtype(dtype))
    results = []
    for block in (1, 7, None):
        out = numba_cpu.forward(*args, block=block)
        grads = numba_cpu.backward(case.grad_output, *args, 0, block=block)
        results.append(dict(zip(("output", "input", "offset", "mask", "weight", "bias"),
                                (out, *grads))))
    assert_bitwise_equal(results[0], results[1])
    assert_bitwise_equal(results[0], results[2])


def test_col2im_channel_blocks_do_not_change_the_result(mode):
    """The channel split of col2im's tasks (crossing group boundaries) is invisible."""
    case = make_case(seed=2, batch=2, in_channels=48, out_channels=6, height=6, width=5,
                     kernel=3, groups=3, offset_groups=4)
    geom = check_arguments(*case.args())
    columns = numba_cpu.im2col(case.input, case.offset, case.mask, geom, np.float64)
    results = []
    for block in (16, 20, 48):
        grad_input = np.empty_like(case.input)
        numba_cpu.col2im(columns, case.offset, case.mask, geom, grad_input, block=block)
        results.append(grad_input)
    assert np.array_equal(results[0], results[1])
    assert np.array_equal(results[0], results[2])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_deterministic_across_runs_and_thread_counts(dtype, monkeypatch):
    import numba
    monkeypatch.setattr(numba_cpu, "SERIAL_WORK", 0)
    case = make_case(seed=7, batch=3, in_channels=32, out_channels=8, height=9, width=8,
                     kernel=3, groups=2, offset_groups=2).astype(dtype)
    first = run(case)
    assert_bitwise_equal(first, run(case))
    threads = numba.get_num_threads()
    if threads < 2:
        pytest.skip("one thread: nothing to compare against")
    numba.set_num_threads(1)
    try:
        single = run(case)
    finally:
        numba.set_num_threads(threads)
    assert_bitwise_equal(first, single)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_serial_and_parallel_kernels_agree_bitwise(dtype, monkeypatch):
    case = make_case(seed=8, batch=3, **MIXED).astype(dtype)
    monkeypatch.setattr(numba_cpu, "SERIAL_WORK", 2**62)
    serial = run(case)
    monkeypatch.setattr(numba_cpu, "SERIAL_WORK", 0)
    assert_bitwise_equal(serial, run(case))


def test_concurrent_calls_from_python_threads(monkeypatch):
    """Parallel kernels launched from several threads at once (the workqueue layer would abort)."""
    import threading
    monkeypatch.setattr(numba_cpu, "SERIAL_WORK", 0)
    case = make_case(seed=6, batch=2, **MIXED)
    expected = run(case)
    failures = []

    def work():
        for _ in range(5):
            got = run(case)
            if not all(np.array_equal(got[q], expected[q]) for q in expected
                       if expected[q] is not None):
                failures.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_same_float32_result_as_numpy_backend_within_bounds():
    """float32 numba and float32 numpy both sit within the derived bounds of the reference."""
    case = make_case(seed=9, batch=2, **MIXED).astype(np.float32)
    expected = reference_results(case)
    for backend in ("numba", "numpy"):
        report = compare(run(case, backend=backend), expected, case, np.float32)
        assert all(r[0] for r in report.values()), (backend, report)


def nonfinite_case():
    """Offsets with +-inf, huge values and one NaN, on a small v2 case."""
    case = make_case(seed=4, batch=2, in_channels=4, out_channels=3, height=5, width=5,
                     kernel=3, padding=1, groups=1, offset_groups=2)
    off = case.offset                        # (2, 36, 5, 5)
    off[0, 0, 1, 1] = np.inf                 # dy of tap 0, group 0 at pixel (1, 1)
    off[0, 3, 2, 2] = -np.inf                # dx of tap 1, group 0 at pixel (2, 2)
    off[1, 20, 0, 3] = 1e30                  # dy of tap 1, group 1
    off[1, 21, 4, 4] = -1e6
    off[1, 7, 3, 0] = np.nan                 # dx of tap 3, group 0 at pixel (3, 0), image 1
    return case


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nonfinite_offsets_follow_the_documented_rule(dtype, mode):
    """inf / huge offsets sample outside (finite results), NaN makes its outputs NaN."""
    case = nonfinite_case().astype(dtype)
    for convention in CONVENTIONS:
        actual = run(case, convention)
        expected = reference_results(case, convention)
        report = compare(actual, expected, case, dtype)
        assert all(r[0] for r in report.values()), (convention, report)
        out = actual["output"]
        nan = np.isnan(out)
        # the NaN offset is used by every output channel of image 1 at pixel (3, 0), only there
        assert nan[1, :, 3, 0].all()
        nan[1, :, 3, 0] = False
        assert not nan.any()
        assert np.isfinite(actual["output"][0]).all()


def test_empty_batch():
    case = make_case(seed=0, batch=0, **MIXED)
    out = api.deform_conv2d(*case.args(), backend="numba")
    assert out.shape == (0, 6) + case.offset.shape[2:]
    grads = api.deform_conv2d_backward(case.grad_output, *case.args(), backend="numba")
    assert grads.input.shape == case.input.shape
    assert np.array_equal(grads.weight, np.zeros_like(case.weight))


def test_shared_math_is_compiled_from_bilinear():
    """No second copy: the compiled helpers run the code objects of refdcn.bilinear."""
    from refdcn import bilinear
    for name in numba_cpu._SHARED:
        assert getattr(numba_cpu, name).py_func.__code__ is getattr(bilinear, name).__code__
