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
from refdcn.testing import make_case

AVAILABLE = backends.available()

# ----------------------------------------------------------------------------- fork safety
#
# Large enough that every kernel takes its parallel path (more column elements
# than the Numba backend's serial threshold; any size opens an OpenMP team).
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
    """Numba's ``omp`` layer (GNU OpenMP) does not survive fork: Numba stops such a child.

    Run in a fresh interpreter with ``NUMBA_THREADING_LAYER=omp``.
    """
    env = dict(os.environ, NUMBA_THREADING_LAYER="omp", PYTHONPATH=os.pathsep.join(sys.path))
    script = ("import numba, sys; sys.path.insert(0, {d!r}); import test_hardening as t; "
              "m = t.fork_check({b!r}); print(numba.threading_layer()); print(m or 'OK')"
              ).format(d=os.path.dirname(__file__), b=backend)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=2 * FORK_TIMEOUT + 60)
    lines = proc.stdout.split()
    if proc.returncode == 0 and lines[:1] != ["omp"]:
        pytest.skip(f"Numba's omp threading layer is not available here ({lines[:1]})")
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


def all_results(case, backend, convention):
    with np.errstate(all="ignore"):
        out = refdcn.deform_conv2d(*case.args(), backend=backend)
        grads = refdcn.deform_conv2d_backward(case.grad_output, *case.args(), backend=backend,
                                              convention=convention)
    return [np.asarray(out)] + [None if g is None else np.asarray(g) for g in grads]


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
