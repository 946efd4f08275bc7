"""What is particular to the "numba" backend's design: serial and parallel copies of each
kernel, thread counts, col2im's channel blocks, concurrent calls, the shared math.

Agreement with the loop reference, block-size invariance, determinism, non-finite
inputs, both conventions and both dtypes are tested once for every backend in
tests/test_backends.py.
"""

import numpy as np
import pytest

from refdcn import api, backends
from refdcn.testing import make_case

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


def test_col2im_channel_blocks_do_not_change_the_result(mode):
    """The channel split of col2im's tasks (crossing group boundaries) is invisible."""
    case = make_case(seed=2, batch=2, in_channels=48, out_channels=6, height=6, width=5,
                     kernel=3, groups=3, offset_groups=4)
    geom = check_arguments(*case.args())
    columns = np.empty((geom.batch, geom.groups, geom.out_pixels, geom.taps * geom.in_per_group))
    numba_cpu.im2col(case.input, case.offset, case.mask, geom, columns)
    results = []
    for block in (16, 20, 48):
        grad_input = np.empty_like(case.input)
        numba_cpu.col2im(columns, case.offset, case.mask, geom, grad_input, block=block)
        results.append(grad_input)
    assert np.array_equal(results[0], results[1])
    assert np.array_equal(results[0], results[2])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_deterministic_across_runs_and_thread_counts(dtype, monkeypatch):
    from refdcn import parallel
    monkeypatch.setattr(numba_cpu, "SERIAL_WORK", 0)
    case = make_case(seed=7, batch=3, in_channels=32, out_channels=8, height=9, width=8,
                     kernel=3, groups=2, offset_groups=2).astype(dtype)
    first = run(case)
    assert_bitwise_equal(first, run(case))
    try:
        for threads in (1, 3):
            parallel.set_num_threads(threads)
            assert_bitwise_equal(first, run(case))
    finally:
        parallel.set_num_threads(None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_serial_and_parallel_kernels_agree_bitwise(dtype, monkeypatch):
    case = make_case(seed=8, batch=3, **MIXED).astype(dtype)
    monkeypatch.setattr(numba_cpu, "SERIAL_WORK", 2**62)
    serial = run(case)
    monkeypatch.setattr(numba_cpu, "SERIAL_WORK", 0)
    assert_bitwise_equal(serial, run(case))


def test_concurrent_calls_from_python_threads(monkeypatch):
    """Parallel kernels launched from several Python threads at once."""
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


def test_shared_math_is_compiled_from_bilinear():
    """No second copy: the compiled helpers run the code objects of refdcn.bilinear."""
    from refdcn import bilinear
    for name in numba_cpu._SHARED:
        assert getattr(numba_cpu, name).py_func.__code__ is getattr(bilinear, name).__code__


ORDER_SCRIPT = """
import sys, threading
import numpy as np
if sys.argv[1] == "numba-first":
    import numba
    numba.set_num_threads(1)                      # starts Numba's threading layer first
import refdcn
from refdcn.backends import numba_cpu
from refdcn.testing import make_case
numba_cpu.SERIAL_WORK = 0
refdcn.parallel.set_num_threads(2)
case = make_case(seed=3, batch=2, in_channels=8, out_channels=4, height=9, width=7, kernel=3)
out = refdcn.deform_conv2d(*case.args(), backend="numba")
g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend="numba")
from numba.np.ufunc import parallel as layer
workers = sum(t.name == "refdcn-worker" for t in threading.enumerate())
print(sys.argv[1] == "numba-first" or not layer._is_initialized, workers)
np.save(sys.argv[2], np.concatenate([out.ravel(), g.input.ravel(), g.offset.ravel()]))
"""


def test_independent_of_numbas_threading_layer_and_call_order(tmp_path):
    """Issue 12 item 9: the kernels never start a Numba threading layer, and
    ``numba.set_num_threads()`` called first changes neither threads nor results."""
    import subprocess
    import sys
    outputs = []
    for order in ("refdcn-first", "numba-first"):
        path = tmp_path / f"{order}.npy"
        done = subprocess.run([sys.executable, "-c", ORDER_SCRIPT, order, str(path)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        untouched, workers = done.stdout.split()
        assert untouched == "True"          # refdcn alone never started Numba's layer
        assert int(workers) >= 1            # its kernels ran on refdcn's own threads
        outputs.append(np.load(path))
    assert np.array_equal(outputs[0], outputs[1])
