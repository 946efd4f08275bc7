"""What is specific to the "cuda" backend (refdcn/backends/cuda/).

The generic tests (agreement, tiles, determinism, non-finite inputs) are in
tests/test_backends.py, parametrised over the registry; on the simulator only
its fixed cases run the cuda backend (it is too slow for the property-based
ones), on a GPU all of them do (scripts/gpu_check.sh).  Here: agreement with
each GEMM engine, the driver's device path (tiles, row ranges), the
deterministic gather, per-call buffers under interleaved calls, device-array
interop, the GEMM kernel, availability messages and PTX compilation.

Without a GPU these tests run on Numba's CUDA simulator (tests/conftest.py sets
``NUMBA_ENABLE_CUDASIM=1`` when there is no GPU); with a GPU they run on the
device.  Nothing here forces the simulator.  The simulator runs one Python
thread per CUDA thread, so the shapes are tiny; the element-wise kernels run
with an odd, non-power-of-two block size (37 threads) and at most 3 blocks, so
that partial blocks and grid-stride loops are exercised.

``numba.cuda.compile_ptx`` of every shared bilinear function and every kernel,
for float32 and float64, runs in a subprocess with the simulator off: the
simulator executes the kernels as Python (``math.floor`` returns an int there,
NumPy scalars promote differently), so only the real compiler catches typing
errors of the device code.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import refdcn
from refdcn import backends, driver
from refdcn.geometry import check_arguments
from refdcn.testing import compare, make_case, reference_results
from refdcn.tolerances import gamma, relative_error

ROOT = Path(__file__).resolve().parents[1]

try:
    cb = backends.get("cuda")
except backends.BackendUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

from refdcn.backends.cuda import (gather, gemm, interop, memory, probe, settings,  # noqa: E402
                                  signatures)
from refdcn.backends.cuda.launch import launch, launch_blocks  # noqa: E402

#: Matrix-product engines to test: the Numba GEMM always, cuBLAS when CuPy works here.
ENGINES = ["numba"] + (["cublas"] if not cb.SIMULATED and interop.cupy() is not None else [])


@pytest.fixture(autouse=True)
def odd_launches(monkeypatch):
    """Odd block size, few blocks, and a clean cache, for every test."""
    monkeypatch.setattr(settings, "THREADS_PER_BLOCK", 37)
    monkeypatch.setattr(settings, "MAX_BLOCKS", 3)
    monkeypatch.setattr(settings, "DETERMINISTIC", False)
    monkeypatch.setattr(settings, "GEMM", "numba")
    yield
    cb.clear_cache()


def run(case, convention="torchvision", **kwargs):
    out = refdcn.deform_conv2d(*case.args(), backend="cuda", **kwargs)
    g = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend="cuda",
                                      convention=convention, **kwargs)
    return {"output": out, **g._asdict()}


def assert_agrees(actual, case, dtype, convention):
    expected = reference_results(case, convention)
    report = compare(actual, expected, case, dtype)
    bad = {q: r for q, r in report.items() if not r[0]}
    assert not bad, f"{case.describe()} {np.dtype(dtype)} {convention}: {bad}"


# A case with everything: groups 2, offset groups 2, a 3x2 kernel, per-axis stride,
# padding and dilation, mask and bias.  "integer" offsets put samples exactly on grid
# lines and on y = -1 / x = -1, where the two conventions differ.
FULL = dict(batch=2, in_channels=4, out_channels=4, height=5, width=4, kernel=(3, 2),
            stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, offset_groups=2)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("convention, offsets", [("torchvision", "integer"),
                                                 ("mmcv", "integer"),
                                                 ("torchvision", "random")])
def test_matches_reference(convention, offsets, dtype, engine, monkeypatch):
    monkeypatch.setattr(settings, "GEMM", engine)
    case = make_case(seed=3, offsets=offsets, dtype=dtype, **FULL)
    actual = run(case, convention)
    assert all(isinstance(v, np.ndarray) for v in actual.values()), "NumPy in, NumPy out"
    assert actual["output"].dtype == dtype
    assert_agrees(actual, case, dtype, convention)


def test_conventions_differ_on_this_case():
    """The case above does land on y = -1 / x = -1 (so both conventions are really tested)."""
    case = make_case(seed=3, offsets="integer", **FULL)
    tv = reference_results(case, "torchvision")["offset"]
    mm = reference_results(case, "mmcv")["offset"]
    assert relative_error(mm, tv) > 1e-3


def run_with_bound(case, nbytes):
    refdcn.set_column_memory(nbytes)
    try:
        return run(case)
    finally:
        refdcn.set_column_memory(None)


def test_tiles_of_the_driver_on_the_device(monkeypatch):
    """The driver's device path: blocks of 1, 2 and 3 images are bitwise identical
    (deterministic mode: per-image GEMMs, weight gradient accumulated in batch order), and
    images split into ranges of 2 output rows (row slices copied contiguous on the device,
    the last range shorter, strided stores of output and offset/mask gradients, input
    gradient accumulated over ranges) agree with the reference.  The simulator's cut of
    ``tests/test_backends.py``'s tile tests, which it is too slow to run in full."""
    monkeypatch.setattr(settings, "DETERMINISTIC", True)
    case = make_case(seed=7, batch=3, dtype=np.float64, **{k: v for k, v in FULL.items()
                                                           if k != "batch"})
    geom = check_arguments(*case.args())
    bounds = [cb.KERNELS.tile_bytes(geom.with_batch(n), 8) for n in (1, 2, 3)]
    assert [len(driver.plan(cb.KERNELS, geom, 8, b)) for b in bounds] == [3, 2, 1]
    results = [run_with_bound(case, b) for b in bounds]
    for other in results[1:]:
        for q in results[0]:
            if results[0][q] is not None:
                np.testing.assert_array_equal(results[0][q], other[q], err_msg=q)
    assert_agrees(results[0], case, np.float64, "torchvision")

    row = geom.in_channels * geom.taps * geom.out_w * 8
    monkeypatch.setattr(driver, "TILE_COLUMN_BYTES", 2 * row)      # ranges of 2 rows
    tiles = driver.plan(cb.KERNELS, geom, 8)
    assert geom.out_h == 3 and [t.row1 - t.row0 for t in tiles] == [2, 1] * 3
    assert_agrees(run(case), case, np.float64, "torchvision")


def test_every_array_the_driver_hands_over_is_on_the_device(monkeypatch):
    """The driver's buffers come from the kernel set's device hooks (the simulator would
    also run kernels on host arrays, a GPU would copy them in and out at every launch and
    cuBLAS would write into a copy): every array argument of every kernel and matrix
    product is a device array, whole images and row ranges, forward and backward."""
    seen = []

    def checked(name, hook):
        def call(*args, **kwargs):
            arrays = [a for a in args if hasattr(a, "shape")]
            seen.append(name)
            assert all(isinstance(a, probe.DeviceArray) for a in arrays), (
                name, [type(a).__name__ for a in arrays])
            return hook(*args, **kwargs)
        return call
    kernels = cb.KERNELS
    monkeypatch.setattr(cb, "KERNELS", dataclasses.replace(kernels, **{
        name: checked(name, getattr(kernels, name)) for name in (
            "im2col", "col2im", "coordinate_gradients", "matmul", "assign", "add_bias",
            "bias_gradient")}))
    case = make_case(seed=31, dtype=np.float32, **FULL)
    geom = check_arguments(*case.args())
    for fixed_rows in (geom.out_h, 2):
        monkeypatch.setattr(driver, "TILE_COLUMN_BYTES",
                            fixed_rows * geom.in_channels * geom.taps * geom.out_w * 4)
        assert_agrees(run(case), case, np.float32, "torchvision")
    assert {"im2col", "col2im", "coordinate_gradients", "matmul", "assign", "add_bias",
            "bias_gradient"} <= set(seen)


@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
def test_deterministic_mode(convention, monkeypatch):
    monkeypatch.setattr(settings, "DETERMINISTIC", True)
    case = make_case(seed=11, offsets="integer", dtype=np.float64, **FULL)
    first = run(case, convention)
    assert_agrees(first, case, np.float64, convention)
    # the order of every sum is fixed by the data, not by the launch configuration
    monkeypatch.setattr(settings, "THREADS_PER_BLOCK", 5)
    second = run(case, convention)
    for q in first:
        if first[q] is not None:
            np.testing.assert_array_equal(first[q], second[q], err_msg=q)


def _interleave_one_call(monkeypatch, inner_case, inner_results, **hooks):
    """Make the first matrix product of the next call first run a whole other call
    (forward and backward on ``inner_case``): that call lands between the outer call's
    im2col and its GEMM, where a buffer shared between calls would be overwritten.
    ``hooks`` replace more hooks of the kernel set."""
    kernels = cb.KERNELS
    pending = [inner_case]

    def matmul(*args, **kwargs):
        if pending:
            inner_results.update(run(pending.pop()))
        return kernels.matmul(*args, **kwargs)
    monkeypatch.setattr(cb, "KERNELS", dataclasses.replace(kernels, matmul=matmul, **hooks))


@pytest.mark.parametrize("deterministic", [False, True])
def test_interleaved_calls_use_their_own_buffers(deterministic, monkeypatch):
    """issue 12 item 3: a call that runs while another is between im2col and GEMM (what
    two host threads do) does not touch the other's columns; both agree with the
    reference.  The control shows the interleaving really reaches the columns: with one
    column buffer shared by every call, the outer call computes from the inner call's data."""
    monkeypatch.setattr(settings, "DETERMINISTIC", deterministic)
    outer = make_case(seed=23, dtype=np.float64, **FULL)
    inner_case = make_case(seed=29, dtype=np.float64, **FULL)   # same shapes, other data
    inner = {}
    _interleave_one_call(monkeypatch, inner_case, inner)
    assert_agrees(run(outer), outer, np.float64, "torchvision")
    assert_agrees(inner, inner_case, np.float64, "torchvision")

    shared = []

    def one_buffer(size, dtype):
        if not shared:
            shared.append(memory.empty((size,), dtype))
        return shared[0]
    _interleave_one_call(monkeypatch, inner_case, inner, column_buffer=one_buffer)
    report = compare(run(outer), reference_results(outer, "torchvision"), outer, np.float64)
    assert not report["output"][0], "the control did not interleave"


def test_sort_buckets_kernel():
    """The step that makes the gather deterministic: every bucket sorted, nothing lost."""
    rng = np.random.default_rng(0)
    counts = np.array([0, 3, 1, 0, 7, 2, 5])
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    order = rng.permutation(int(starts[-1])).astype(np.int64)
    expected = np.concatenate([np.sort(order[a:b]) for a, b in zip(starts[:-1], starts[1:])])
    d_order = cb.cuda.to_device(order)
    launch(gather.sort_buckets, len(counts))(cb.cuda.to_device(starts), d_order)
    np.testing.assert_array_equal(d_order.copy_to_host(), expected)


def test_exclusive_scan_kernel():
    counts = np.random.default_rng(1).integers(0, 5, size=100).astype(np.int64)
    starts = cb.cuda.to_device(np.full(101, -7, np.int64))
    launch_blocks(gather.exclusive_scan, 1, 37)(cb.cuda.to_device(counts), starts)
    np.testing.assert_array_equal(starts.copy_to_host(),
                                  np.concatenate([[0], np.cumsum(counts)]))


def test_device_arrays_in_device_arrays_out():
    """Device inputs give device results; float32 Fortran-ordered inputs are converted on
    the device (the compute dtype is float64 because the weight is)."""
    case = make_case(seed=17, dtype=np.float64, **FULL)
    to_dev = cb.cuda.to_device
    dev = dict(input=to_dev(np.asfortranarray(case.input.astype(np.float32))),
               offset=to_dev(case.offset), weight=to_dev(case.weight),
               bias=to_dev(case.bias), mask=to_dev(case.mask))
    grad_output = to_dev(case.grad_output)
    args = (dev["input"], dev["offset"], dev["weight"], dev["bias"], case.stride,
            case.padding, case.dilation, dev["mask"])
    out = refdcn.deform_conv2d(*args, backend="cuda")
    grads = refdcn.deform_conv2d_backward(grad_output, *args, backend="cuda")
    results = {"output": out, **grads._asdict()}
    for q, r in results.items():
        assert isinstance(r, probe.DeviceArray), f"{q}: {type(r)}"
        assert r.dtype == np.float64
    host = {q: r.copy_to_host() for q, r in results.items()}
    exact = case.astype(np.float64)
    exact.input = case.input.astype(np.float32).astype(np.float64)
    assert_agrees(host, exact, np.float64, "torchvision")


def test_coerce():
    assert isinstance(cb.coerce([[1.0]]), np.ndarray)
    dev = cb.cuda.to_device(np.zeros(3))
    assert cb.coerce(dev) is dev
    assert cb.coerce(None) is None

    class Foreign:
        __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False),
                                    "version": 3}
    if cb.SIMULATED:
        with pytest.raises(TypeError, match="simulator"):
            cb.coerce(Foreign())


@pytest.mark.parametrize("library", ["torch", "cupy"])
def test_foreign_device_arrays(library):
    """PyTorch CUDA tensors and CuPy arrays go in without a host copy; Numba device
    arrays come out, and the library views them back without a copy."""
    if cb.SIMULATED:
        pytest.skip("needs a GPU (the simulator cannot read real device memory)")
    case = make_case(seed=19, dtype=np.float32, **FULL)
    if library == "torch":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("torch without CUDA")
        to_dev = lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()
        back = lambda r: torch.as_tensor(r, device="cuda").cpu().numpy()
    else:
        cupy = pytest.importorskip("cupy")
        to_dev, back = cupy.asarray, lambda r: cupy.asnumpy(cupy.asarray(r))
    args = (to_dev(case.input), to_dev(case.offset), to_dev(case.weight), to_dev(case.bias),
            case.stride, case.padding, case.dilation, to_dev(case.mask))
    out = refdcn.deform_conv2d(*args, backend="cuda")
    grads = refdcn.deform_conv2d_backward(to_dev(case.grad_output), *args, backend="cuda")
    results = {"output": out, **grads._asdict()}
    assert all(isinstance(r, probe.DeviceArray) for r in results.values())
    assert_agrees({q: back(r) for q, r in results.items()}, case, np.float32, "torchvision")


def test_gemm_setting_is_checked(monkeypatch):
    monkeypatch.setattr(settings, "GEMM", "fast")
    with pytest.raises(ValueError, match="GEMM must be"):
        gemm.gemm_engine(10)
    monkeypatch.setattr(settings, "GEMM", "numba")
    assert gemm.gemm_engine(1 << 40) == "numba"


def test_description_says_where_it_runs():
    caps = backends.capabilities("cuda")
    assert caps.device == "cuda" and caps.simulated == cb.SIMULATED
    assert ("SIMULATOR" in cb.DESCRIPTION) == cb.SIMULATED


@pytest.mark.parametrize("ta, tb, accumulate", [(False, False, False), (True, False, False),
                                                (False, True, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_kernel_with_gpu_tiles(ta, tb, accumulate, dtype):
    """The Numba GEMM with the tile sizes used on the GPU (16x16 threads, 64x64 tiles,
    K by 16), on a product with partial tiles and two K steps."""
    kernel = gemm.make_gemm_kernel(dtype, 16, 4, 16)
    rng = np.random.default_rng(2)
    G, M, N, Kd = 2, 3, 70, 20
    a = rng.normal(size=(G, Kd, M) if ta else (G, M, Kd)).astype(dtype)
    b = rng.normal(size=(G, N, Kd) if tb else (G, Kd, N)).astype(dtype)
    c0 = rng.normal(size=(G, M, N)).astype(dtype)
    A = a.transpose(0, 2, 1) if ta else a
    B = b.transpose(0, 2, 1) if tb else b
    exact = A.astype(np.float64) @ B.astype(np.float64) + (c0 if accumulate else 0)
    d_c = cb.cuda.to_device(c0)
    kernel[(2, 1, G), (16, 16)](cb.cuda.to_device(a), cb.cuda.to_device(b), d_c, ta, tb,
                                accumulate)
    # error bound of a sum of Kd (+1) rounded products: gamma_n * sum |terms|
    bound = gamma(Kd + 1, dtype) * (np.abs(A).astype(np.float64) @ np.abs(B) +
                                    (np.abs(c0) if accumulate else 0))
    assert (np.abs(d_c.copy_to_host() - exact) <= bound + 1e-300).all()


def test_no_gpu_benchmark_message(capsys):
    from refdcn.benchmarks import gpu
    if not cb.SIMULATED:
        pytest.skip("a GPU is present: scripts/gpu_check.sh runs the benchmark")
    assert gpu.run_gpu_benchmark() == 2
    assert "no GPU" in capsys.readouterr().out


def test_benchmark_row_on_a_tiny_shape():
    """The benchmark's timing and accuracy code on one tiny shape (one call of each)."""
    from refdcn import api
    from refdcn.benchmarks import gpu
    row = gpu._bench_shape((1, 2, 3, 5, 4, 3), cb, api, None, None, gpu._timer(cb.cuda),
                           1, 0, np.dtype(np.float32))
    assert row["fwd_err"] <= 1e-6                 # the accuracy target
    assert np.isfinite(row["grad_err"]) and row["tv_fwd"] is None


# ---------------------------------------------------------------------------------------
# Without the simulator: import errors and the real compiler
# ---------------------------------------------------------------------------------------

def _python(code, timeout=300):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_unavailable_without_gpu_or_simulator():
    if not cb.SIMULATED:
        pytest.skip("there is a GPU here")
    proc = _python("""
        from refdcn import backends, driver
        try:
            backends.get("cuda")
        except backends.BackendUnavailable as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "no usable NVIDIA GPU" in proc.stdout and "NUMBA_ENABLE_CUDASIM" in proc.stdout


def test_unavailable_without_numba_cuda():
    proc = _python("""
        import sys
        sys.modules["numba_cuda"] = None          # as if numba-cuda were not installed
        from refdcn import backends, driver
        try:
            backends.get("cuda")
        except backends.BackendUnavailable as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "numba-cuda is not installed" in proc.stdout


#: compute capability the PTX is generated for (any that the installed NVVM supports)
PTX_CC = (8, 0)

_COMPILE_SCRIPT = """
import json, sys, types
from numba import cuda
result = {"nvvm": None, "ptx": {}}
try:
    cuda.compile_ptx(lambda a, b: a + b, "float64(float64, float64)", device=True,
                     cc=CC)
except Exception as exc:
    result["nvvm"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result)); sys.exit(0)
# No GPU needed to generate PTX: let the backend import, and compile the device
# functions that kernels call for CC instead of the current device's.
import numba.cuda.dispatcher as dispatcher
cuda.is_available = lambda: True
dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
import numpy as np
from numba import types as nt
from refdcn.backends.cuda import sampling, signatures

i64, b1 = nt.int64, nt.boolean
for name, f in (("float32", nt.float32), ("float64", nt.float64)):
    plane = nt.Array(f, 2, "A")
    d = nt.float64
    device = {
        "sampling_point": (i64, i64, i64, i64, i64, f),
        "locate": (f, f, i64, i64, b1),
        "in_image": (i64, i64, i64, i64),
        "pixel": (plane, i64, i64, i64, i64),
        "corners": (plane, i64, i64, i64, i64),
        "corner_weights": (f, f),
        "weighted_sum": (f, f, f, f, d, d, d, d),
        "scatter_corners": (i64, i64, d, d),
        "interpolate": (f, f, f, f, d, d),
        "interpolate_gradient": (f, f, f, f, d, d),
        "bilinear_sample": (plane, i64, i64, d, d),
        "bilinear_gradient": (plane, i64, i64, d, d, i64),
    }
    for fn, sig in device.items():
        key = f"device:{fn}:{name}"
        try:
            ptx, ret = cuda.compile_ptx(sampling.DEVICE_SOURCES[fn], sig, device=True, cc=CC)
            result["ptx"][key] = {"ok": True, "ret": str(ret)}
        except Exception as exc:
            result["ptx"][key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    for kn, (pyfunc, sig) in signatures.kernel_signatures(np.dtype(name)).items():
        key = f"kernel:{kn}:{name}"
        try:
            cuda.compile_ptx(pyfunc, sig, device=False, cc=CC)
            result["ptx"][key] = {"ok": True}
        except Exception as exc:
            result["ptx"][key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(result))
"""

DEVICE_NAMES = ["sampling_point", "locate", "in_image", "pixel", "corners", "corner_weights",
                "weighted_sum", "scatter_corners", "interpolate", "interpolate_gradient",
                "bilinear_sample", "bilinear_gradient"]
KERNEL_NAMES = sorted(signatures.KERNELS) + ["gemm_kernel"]


@pytest.fixture(scope="module")
def compiled():
    proc = _python(_COMPILE_SCRIPT.replace("CC", repr(PTX_CC)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["nvvm"]:
        pytest.skip(f"libNVVM is not available here, compile_ptx cannot run "
                    f"({result['nvvm'][:300]}); install it with "
                    f"pip install 'nvidia-nvvm==13.*' (CUDA 13) or a CUDA toolkit")
    return result["ptx"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", DEVICE_NAMES)
def test_compile_ptx_device_function(compiled, name, dtype):
    r = compiled[f"device:{name}:{dtype}"]
    assert r["ok"], r.get("error")
    if name == "locate":
        # the floor corner must be an integer on the GPU too (math.floor is a float there)
        assert r["ret"] == "Tuple(bool, int64, int64, float64, float64)", r["ret"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_compile_ptx_kernel(compiled, name, dtype):
    r = compiled[f"kernel:{name}:{dtype}"]
    assert r["ok"], r.get("error")
