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
