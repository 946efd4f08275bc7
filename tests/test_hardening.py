"""Hardening (issue 12): fork safety, the dtype policy, non-finite values, clear errors.

Every test is parametrised over the registry; nothing here names a backend
except to choose an environment (a Numba threading layer) to run it in.
"""

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

import refdcn
from refdcn import backends
from refdcn.testing import all_results, make_case

AVAILABLE = backends.available()

# ----------------------------------------------------------------------------- fork safety
#
# Large enough that every kernel takes its parallel path (more column elements
# than the serial threshold of the numba and cython backends, whose kernels run on
# refdcn's own threads: a child restarts them on first use).
FORK_CASE = dict(seed=11, batch=4, in_channels=16, out_channels=8, height=20, width=22,
                 kernel=(3, 2), padding=1, groups=2, offset_groups=2)
#: A small case for the backends that run Python per element (the loops, the CUDA simulator).
SMALL_CASE = dict(FORK_CASE, batch=1, in_channels=4, out_channels=4, height=5, width=6)
FORK_TIMEOUT = 120


def slow(backend):
    """Backends that run Python code per element (as in tests/test_backends.py)."""
    return backend == "reference" or getattr(backends.get(backend), "SIMULATED", False)


def _forward_backward(backend):
    case = make_case(**(SMALL_CASE if slow(backend) else FORK_CASE), dtype=np.float32)
    out = refdcn.deform_conv2d(*case.args(), backend=backend)
    grads = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
    return [np.asarray(out)] + [np.asarray(g) for g in grads]


def _child(backend, queue):
    try:
        queue.put(("ok", _forward_backward(backend)))
    except BaseException as exc:          # report, do not hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def fork_check(backend):
    """Use ``backend``, fork, use it in the child; the child's results must be bitwise the parent's.

    Returns a message, "" on success.  A child that hangs or dies fails, after
    :data:`FORK_TIMEOUT` seconds at most.
    """
    parent = _forward_backward(backend)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(backend, queue), daemon=True)
    child.start()
    try:
        status, result = queue.get(timeout=FORK_TIMEOUT)
    except Exception:
        child.kill()
        child.join()
        return f"the forked child did not answer within {FORK_TIMEOUT} s (exit code {child.exitcode})"
    child.join(FORK_TIMEOUT)
    if status != "ok":
        return f"the forked child raised {result}"
    names = ["output", "input", "offset", "mask", "weight", "bias"]
    differ = [n for n, a, b in zip(names, parent, result) if not np.array_equal(a, b)]
    return f"the child's {differ} differ from the parent's" if differ else ""


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="no fork() on this platform")
@pytest.mark.parametrize("backend", AVAILABLE)
def test_fork(backend):
    """After a backend has run (threads started), a forked child gets bitwise the same results."""
    message = fork_check(backend)
    assert not message, f"{backend}: {message}"


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="no fork() on this platform")
@pytest.mark.parametrize("backend", [b for b in AVAILABLE if b in ("numba",)])
def test_fork_numba_openmp_layer(backend):
    """``NUMBA_THREADING_LAYER=omp`` (GNU OpenMP, whose team does not survive fork) changes
    nothing: the numba backend runs on :mod:`refdcn.parallel` and never starts a Numba layer.

    Run in a fresh interpreter with ``NUMBA_THREADING_LAYER=omp``.
    """
    env = dict(os.environ, NUMBA_THREADING_LAYER="omp", PYTHONPATH=os.pathsep.join(sys.path))
    script = ("import sys; sys.path.insert(0, {d!r}); import test_hardening as t; "
              "m = t.fork_check({b!r}); from numba.np.ufunc import parallel as layer; "
              "print('started' if layer._is_initialized else 'not-started'); print(m or 'OK')"
              ).format(d=os.path.dirname(__file__), b=backend)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=2 * FORK_TIMEOUT + 60)
    lines = proc.stdout.split()
    assert lines[:1] == ["not-started"], proc.stdout + proc.stderr
    assert proc.returncode == 0 and lines[-1:] == ["OK"], proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- non-finite values
#
# The IEEE rule (README, "Guarantees"; refdcn/reference/loops.py): every backend gives the
# same NaN / +inf / -inf / finite pattern as the loop reference in all six results.

RESULTS = ("output", "input", "offset", "mask", "weight", "bias")
PLACES = ("input", "weight", "offset", "mask", "grad_output", "bias")
NONFINITE = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}


def classes(array):
    """0 NaN, 1 +inf, 2 -inf, 3 finite, element-wise."""
    a = np.asarray(array, dtype=np.float64)
    return np.select([np.isnan(a), a == np.inf, a == -np.inf], [0, 1, 2], 3)


def nonfinite_case(place, value, dtype):
    """A small case (non-square kernel, groups and offset groups 2, padding) with ``value``
    at the first element and in the middle of ``place``."""
    case = make_case(seed=5, batch=2, in_channels=4, out_channels=4, height=5, width=6,
                     kernel=(3, 2), padding=1, groups=2, offset_groups=2)
    array = getattr(case, place)
    array.flat[0] = value
    array[tuple(s // 2 for s in array.shape)] = value
    return case.astype(dtype)


def nonfinite_mismatches(backend, place, value, dtype, convention):
    case = nonfinite_case(place, value, dtype)
    expected = all_results(case, "reference", convention)
    actual = all_results(case, backend, convention)
    return {name: int((classes(a) != classes(e)).sum())
            for name, a, e in zip(RESULTS, actual, expected)
            if not np.array_equal(classes(a), classes(e))}


@pytest.mark.parametrize("backend", [b for b in AVAILABLE if not slow(b)])
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("value", list(NONFINITE))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("convention", ["torchvision", "mmcv"])
def test_nonfinite(backend, place, value, dtype, convention):
    """inf, -inf or NaN in any argument: the same NaN/inf pattern as the reference, everywhere."""
    bad = nonfinite_mismatches(backend, place, NONFINITE[value], dtype, convention)
    assert not bad, f"{backend}: elements whose NaN/+inf/-inf/finite class differs: {bad}"


@pytest.mark.parametrize("backend", [b for b in AVAILABLE if slow(b) and b != "reference"])
@pytest.mark.parametrize("place", ["input", "weight", "mask"])
def test_nonfinite_simulated(backend, place):
    """The same on the simulated backends (float64, +inf, where backends used to differ)."""
    bad = nonfinite_mismatches(backend, place, np.inf, np.float64, "torchvision")
    assert not bad, f"{backend}: elements whose class differs: {bad}"


# ----------------------------------------------------------------------------- dtype policy

def _dtype_case(**dtypes):
    case = make_case(seed=2, batch=1, in_channels=4, out_channels=4, height=5, width=4,
                     kernel=(2, 3), padding=1, groups=2, offset_groups=2)
    for name, dtype in dtypes.items():
        setattr(case, name, getattr(case, name).astype(dtype))
    return case


WIDE_FLOAT = np.finfo(np.longdouble).precision > np.finfo(np.float64).precision


@pytest.mark.parametrize("backend", [b for b in AVAILABLE if not slow(b)])
@pytest.mark.parametrize("dtypes, expected", [
    (dict(input=np.float64, offset=np.float32, weight=np.float32, mask=np.float16,
          bias=np.float32, grad_output=np.float32), np.float64),
    (dict(input=np.float32, offset=np.float32, weight=np.float64, mask=np.float32,
          bias=np.float32, grad_output=np.float32), np.float64),
    (dict(input=np.float32, offset=np.float32, weight=np.float32, mask=np.float32,
          bias=np.float32, grad_output=np.float64), np.float64),
    (dict(input=np.float16, offset=np.float32, weight=np.float16, mask=np.float16,
          bias=np.float16, grad_output=np.float16), np.float32),
])
def test_dtype_policy(backend, dtypes, expected):
    """float64 anywhere -> computed and returned in float64 (one policy, every backend)."""
    case = _dtype_case(**dtypes)
    out = refdcn.deform_conv2d(*case.args(), backend=backend)
    grads = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
    # the forward sees every array but grad_output; the backward all of them
    forward_dtype = np.result_type(*[d for n, d in dtypes.items() if n != "grad_output"])
    assert np.asarray(out).dtype == (np.float64 if forward_dtype == np.float64 else np.float32)
    assert {np.asarray(g).dtype for g in grads if g is not None} == {np.dtype(expected)}
    if expected == np.float64:      # computed in float64, not rounded through float32
        from refdcn.testing import compare, reference_results
        report = compare(grads._asdict(), {k: v for k, v in reference_results(case).items()
                                           if k != "output"})
        assert all(ok for ok, _, _ in report.values()), report


@pytest.mark.skipif(not WIDE_FLOAT, reason="np.longdouble is float64 here")
@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("name", ["input", "offset", "weight", "mask", "bias", "grad_output"])
def test_longdouble_is_refused(backend, name):
    """float128 cannot be honoured (refdcn computes in float64 at most): refused, never rounded."""
    case = _dtype_case(**{name: np.longdouble})
    with pytest.raises(TypeError, match=rf"{name} must have a floating dtype.*float128.*float64"):
        if name == "grad_output":
            refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend)
        else:
            refdcn.deform_conv2d(*case.args(), backend=backend)


# ----------------------------------------------------------------------------- clear errors
#
# Each bad input of issue 12, item 8, on every backend: a ValueError/TypeError that
# names the argument, what was received and what was expected.

def _call(backend, **override):
    case = _dtype_case()
    args = dict(input=case.input, offset=case.offset, weight=case.weight, bias=case.bias,
                stride=case.stride, padding=case.padding, dilation=case.dilation, mask=case.mask)
    args.update(override)
    return refdcn.deform_conv2d(**args, backend=backend)


def _ragged():
    return [[[[1.0, 2.0], [3.0]]]]


BAD_INPUTS = {
    "C_in=0": (dict(input=np.zeros((1, 0, 5, 4)), weight=np.zeros((4, 1, 2, 3))),
               ValueError, ["input", "(1, 0, 5, 4)", "C_in"]),
    "H=0 with padding": (dict(input=np.zeros((1, 4, 0, 4))), ValueError,
                         ["input", "(1, 4, 0, 4)", "H, W >= 1"]),
    "W=0 with padding": (dict(input=np.zeros((1, 4, 5, 0))), ValueError, ["input", "(1, 4, 5, 0)"]),
    "weight.shape[1]=0": (dict(weight=np.zeros((4, 0, 2, 3))), ValueError,
                          ["weight.shape[1]", ">= 1", "(4, 0, 2, 3)"]),
    "padding=2**63": (dict(padding=2**63), ValueError, ["padding", str(2**63), "2**31 - 1"]),
    "stride=10**30": (dict(stride=10**30), ValueError, ["stride", str(10**30), "at most"]),
    "dilation=(1, 2**40)": (dict(dilation=(1, 2**40)), ValueError, ["dilation", "at most"]),
    "ragged list": (dict(input=_ragged()), ValueError, ["input", "list", "inhomogeneous"]),
    "set as padding": (dict(padding={2, 1}), TypeError, ["padding", "set", "ordered pair"]),
    "bool as stride": (dict(stride=True), TypeError, ["stride", "True"]),
}


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_bad_input_errors(backend, bad):
    override, exc, words = BAD_INPUTS[bad]
    with pytest.raises(exc) as info:
        _call(backend, **override)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("backend", AVAILABLE)
def test_torch_tensors_are_named(backend):
    """A tensor that requires grad, and a bfloat16 tensor: TypeError naming the argument."""
    torch = pytest.importorskip("torch")
    case = _dtype_case()
    with pytest.raises(TypeError, match=r"weight is a Tensor that requires grad.*weight\.detach\(\)"):
        _call(backend, weight=torch.tensor(case.weight, requires_grad=True))
    with pytest.raises(TypeError, match=r"offset .*bfloat16"):
        _call(backend, offset=torch.tensor(case.offset).to(torch.bfloat16))
    # a plain CPU tensor is an array like any other
    out = _call(backend, input=torch.tensor(case.input))
    assert np.asarray(out).shape == (1, 4, 6, 4)


def test_backward_names_grad_output():
    case = _dtype_case()
    with pytest.raises(ValueError, match="grad_output must be an array"):
        refdcn.deform_conv2d_backward(_ragged(), *case.args())
    with pytest.raises(TypeError, match="grad_output must have a floating dtype"):
        refdcn.deform_conv2d_backward(case.grad_output.astype(np.int8), *case.args())


def test_set_column_memory_arguments():
    try:
        refdcn.set_column_memory("512MiB")
        assert refdcn.column_memory() == 512 * 2**20      # as REFDCN_COLUMN_MEMORY=512MiB
        for bad, exc in ((True, TypeError), (1.5, TypeError), ("0", ValueError),
                         ("lots", ValueError), (0, ValueError)):
            with pytest.raises(exc, match="nbytes"):
                refdcn.set_column_memory(bad)
        assert refdcn.column_memory() == 512 * 2**20      # a refused value changes nothing
    finally:
        refdcn.set_column_memory(None)


def _cli(args, **env):
    """``python -m refdcn ARGS`` in a fresh interpreter: (exit status, stdout, stderr)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    proc = subprocess.run([sys.executable, "-m", "refdcn", *args], capture_output=True,
                          text=True, timeout=300, env=environment)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--json", "/nonexistent-dir/bench.json"], ["--json", "/nonexistent-dir/bench.json"]),
    (["--threads", "100000"], ["--threads", "100000", "number of CPUs"]),
    (["--shape", "100000,100000,1000,1000,1000,3"], ["--shape", "GiB"]),
])
def test_bench_usage_errors_before_any_timing(args, words):
    """Checked before the benchmark starts (it would take the whole run): one line, status 2."""
    status, out, err = _cli(["bench", "--quick", "--no-baselines", "--backend", "numpy", *args])
    assert status == 2 and "Traceback" not in err and out == "", (status, out, err)
    for word in words:
        assert word in err, (word, err)


def test_verify_reports_generator_exit_without_traceback(tmp_path):
    """An implementation raising GeneratorExit (a BaseException) is a failing result."""
    (tmp_path / "gx_impl.py").write_text("def f(*args, **kwargs):\n"
                                         "    raise GeneratorExit('stop')\n")
    status, out, err = _cli(["verify", "gx_impl:f", "--case", "onnx"],
                            PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    assert status == 1 and "Traceback" not in out + err, (status, out, err)
    assert "GeneratorExit" in out + err


# ----------------------------------------------------------------------------- random invalid arguments
#
# Property: whatever the arguments, every backend either computes what the loop reference
# computes for them, or raises ValueError/TypeError whose message names an argument (the
# mutated one, when the fault cannot be blamed on another).  Never another exception.

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from refdcn.geometry import as_pair  # noqa: E402
from refdcn.testing import Case, compare, reference_results  # noqa: E402

ARRAYS = ("input", "offset", "weight", "bias", "mask", "grad_output")
ATTRIBUTES = ("stride", "padding", "dilation")
NAMES = ARRAYS + ATTRIBUTES
BAD_NUMBERS = [0, -1, -2**63, 2**31, 2**31 - 1, 2**63, 10**30, 1.5, float("nan"), True, None, "1",
               {1, 2}, (1,), (1, 2, 3), (1, 2**40), (2, -1), [1, 1], np.int64(2), (np.int32(1), 1),
               np.array([1, 2]), {"h": 1}]
BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object, np.str_,
              np.longdouble, np.float16, np.float32, np.float64, "M8[s]"]
BAD_OBJECTS = [None, "abc", 3.0, {1, 2}, {"a": 1}, [[1.0, 2.0], [3.0]], object(), b"\x00"]


@st.composite
def invalid_arguments(draw):
    """Keyword arguments of deform_conv2d_backward (grad_output included) with 1-3 faults (mostly one).

    Returns ``(arguments, blamed)``: ``blamed`` is the argument a refusal must name,
    or None when the fault may be reported through another argument (a shape mismatch).
    """
    case = make_case(seed=draw(st.integers(0, 1000)), batch=draw(st.integers(0, 2)),
                     in_channels=4, out_channels=4, height=draw(st.integers(2, 5)),
                     width=draw(st.integers(2, 5)), kernel=(2, 1), padding=1, groups=2,
                     offset_groups=2)
    args = dict(input=case.input, offset=case.offset, weight=case.weight, bias=case.bias,
                mask=case.mask, grad_output=case.grad_output, stride=case.stride,
                padding=case.padding, dilation=case.dilation)
    blamed = set()
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(["rank", "size", "dtype", "object", "attribute"]))
        if kind == "attribute":
            name = draw(st.sampled_from(ATTRIBUTES))
            args[name] = value = draw(st.sampled_from(BAD_NUMBERS))
            try:        # a valid value (2**31 - 1, [1, 1]) may still not fit the offset's shape
                as_pair(value, name, 0 if name == "padding" else 1)
                blamed.add(None)
            except (TypeError, ValueError):
                blamed.add(name)
            continue
        name = draw(st.sampled_from(ARRAYS))
        a = args[name]
        if kind == "object":
            args[name] = draw(st.sampled_from(BAD_OBJECTS))
            blamed.add(name)
        elif not isinstance(a, np.ndarray) or a.dtype.kind != "f":     # already mutated
            continue
        elif kind == "rank":
            args[name] = a.reshape(a.shape + (1,)) if draw(st.booleans()) else a.reshape(-1)
            blamed.add(name)
        elif kind == "size":
            axis = draw(st.integers(0, a.ndim - 1))
            shape = list(a.shape)
            shape[axis] = draw(st.sampled_from([0, 1, 3, 7]))
            args[name] = np.resize(a, shape)
            blamed.add(None)
        else:
            dtype = draw(st.sampled_from(BAD_DTYPES))
            with np.errstate(all="ignore"):
                args[name] = np.zeros(a.shape, dtype) if dtype == "M8[s]" else a.astype(dtype)
            blamed.add(name)
    return args, (blamed.pop() if len(blamed) == 1 else None)


def _compute(args, backend):
    forward_args = {k: v for k, v in args.items() if k != "grad_output"}
    out = refdcn.deform_conv2d(**forward_args, backend=backend)
    grads = refdcn.deform_conv2d_backward(args["grad_output"], **forward_args, backend=backend)
    return {"output": np.asarray(out), **{k: None if v is None else np.asarray(v)
                                          for k, v in grads._asdict().items()}}


def _check_invalid(backend, args, blamed):
    try:
        with np.errstate(all="ignore"):
            actual = _compute(args, backend)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if blamed is not None:
            assert blamed in message, f"{backend}: {type(exc).__name__} not naming {blamed}: {exc}"
        else:
            assert any(n in message for n in NAMES), f"{backend}: names no argument: {exc}"
        return
    # accepted: then only float16/32/64 arrays, the policy's dtype, and the right answer
    dtypes = {k: np.dtype(args[k].dtype) for k in ARRAYS if args[k] is not None}
    assert set(dtypes.values()) <= {np.dtype(t) for t in (np.float16, np.float32, np.float64)}, \
        f"{backend} accepted dtypes {dtypes}"
    policy = {True: np.dtype(np.float64), False: np.dtype(np.float32)}
    if not slow(backend):       # the reference returns float64 (documented)
        assert actual["output"].dtype == policy[any(d == np.float64 for k, d in dtypes.items()
                                                    if k != "grad_output")]
        assert actual["input"].dtype == policy[np.dtype(np.float64) in dtypes.values()]
    c = Case(**{k: args[k] for k in ("input", "offset", "weight", "bias", "mask", "grad_output")},
             stride=args["stride"], padding=args["padding"], dilation=args["dilation"])
    dtype = policy[np.dtype(np.float64) in dtypes.values() or slow(backend)]
    report = compare(actual, reference_results(c), c, dtype)
    assert all(ok for ok, _, _ in report.values()), f"{backend} accepted and got {report}"


INVALID_SETTINGS = settings(max_examples=150, deadline=None, database=None,
                            suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("backend", [b for b in AVAILABLE if not slow(b)])
@INVALID_SETTINGS
@given(drawn=invalid_arguments())
def test_invalid_arguments(backend, drawn):
    _check_invalid(backend, *drawn)


@pytest.mark.parametrize("backend", [b for b in AVAILABLE if slow(b)])
@settings(INVALID_SETTINGS, max_examples=8)
@given(drawn=invalid_arguments())
def test_invalid_arguments_slow_backends(backend, drawn):
    _check_invalid(backend, *drawn)
