"""refdcn.parallel: every task runs once, errors reach the caller, fork is safe."""

import multiprocessing
import threading
import time

import numpy as np
import pytest

from refdcn import parallel
from refdcn.tolerances import gamma


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 100])
def test_every_task_runs_exactly_once(threads, n):
    counts = np.zeros(n, int)
    lock = threading.Lock()

    def task(i):
        with lock:
            counts[i] += 1
    parallel.run(n, task, threads)
    assert (counts == 1).all()


def test_tasks_run_on_several_threads_when_they_wait():
    """Tasks that block (as nogil kernels do) are shared by the workers and the caller."""
    seen = set()
    barrier = threading.Barrier(2, timeout=10)

    def task(i):
        seen.add(threading.get_ident())
        barrier.wait()          # two tasks must be in flight at once, or this times out
    parallel.run(2, task, threads=2)
    assert len(seen) == 2 and threading.get_ident() in seen


def test_the_first_error_is_raised_after_the_other_tasks():
    done = []

    def task(i):
        if i == 3:
            raise KeyError("task 3")
        done.append(i)
    with pytest.raises(KeyError, match="task 3"):
        parallel.run(10, task, threads=2)
    assert sorted(done) == [i for i in range(10) if i != 3]


def _child(queue):
    out = np.zeros(50)

    def task(i):
        out[i] = i * i
    parallel.run(50, task, threads=2)
    queue.put(out.tolist())


def test_a_forked_child_gets_its_own_threads():
    parallel.run(4, lambda i: None, threads=2)           # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    result = queue.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert result == [float(i * i) for i in range(50)]


def test_thread_count_setting():
    try:
        parallel.set_num_threads(3)
        assert parallel.num_threads() == 3
        parallel.set_num_threads(np.int64(1))
        assert parallel.num_threads() == 1
        parallel.set_num_threads(None)
        assert parallel.num_threads() == parallel.default_threads() >= 1
    finally:
        parallel.set_num_threads(None)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (True, TypeError),
                                        (2.0, TypeError), ("2", TypeError)])
def test_bad_thread_counts_are_refused_by_name(bad, error):
    with pytest.raises(error, match="threads"):
        parallel.set_num_threads(bad)


def test_single_threaded_blas_nests_and_restores():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    libraries = parallel._blas_controllers()
    if not libraries:
        pytest.skip("no BLAS that threadpoolctl can control")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = [lib.get_num_threads() for lib in libraries]
        with parallel.single_threaded_blas():
            assert all(lib.get_num_threads() == 1 for lib in libraries)
            with parallel.single_threaded_blas():
                pass
            assert all(lib.get_num_threads() == 1 for lib in libraries)   # still inside
        assert [lib.get_num_threads() for lib in libraries] == before
        with parallel.single_threaded_blas(active=False):
            assert [lib.get_num_threads() for lib in libraries] == before


def test_never_more_threads_than_asked():
    """A pool started for more threads (an earlier call) lends only ``threads - 1`` helpers."""
    parallel.run(8, lambda i: None, threads=4)            # a pool with 3 workers exists
    lock = threading.Lock()
    for _ in range(5):
        seen = set()

        def task(i):
            with lock:
                seen.add(threading.get_ident())
            threading.Event().wait(0.01)                   # leave time for idle workers
        parallel.run(12, task, threads=2)
        assert len(seen) <= 2


def test_finished_jobs_free_what_their_tasks_hold():
    """No worker (busy or idle) keeps a finished call's task, and so its arrays, alive."""
    import gc
    import weakref
    parallel.run(8, lambda i: None, threads=5)            # idle workers from an earlier call

    class Buffer:
        pass
    buffer = Buffer()
    ref = weakref.ref(buffer)

    def task(i, buffer=buffer):
        threading.Event().wait(0.001)
    parallel.run(6, task, threads=2)
    del buffer, task
    gc.collect()
    assert ref() is None


def _assert_within_product_bound(actual, pairs):
    """``actual`` (float32) equals ``sum(x @ y for x, y in pairs)`` up to the a-priori bound of
    a float32 sum of ``n`` products, gamma_n * sum |x| @ |y| (Higham, eq. 3.5), with ``n``
    the inner length times the number of products summed."""
    exact = sum(x.astype(np.float64) @ y.astype(np.float64) for x, y in pairs)
    scale = sum(np.abs(x.astype(np.float64)) @ np.abs(y.astype(np.float64)) for x, y in pairs)
    n = pairs[0][0].shape[1] * len(pairs)
    assert (np.abs(actual - exact) <= gamma(n) * scale).all()


def _matmul_operands(seed=3):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2, 64, 300)).astype(np.float32)
    b = rng.standard_normal((6, 3000, 300)).astype(np.float32)     # 3 images x 2 groups
    return a, b


def test_products_on_threads_give_the_bits_of_the_caller_alone():
    """driver.numpy_matmul: the slices of every image and group, multiplied on refdcn's
    threads in any order, give the bits of the same slices multiplied one after another
    in the calling thread (single-threaded BLAS both ways): the schedule and the
    number of threads never change a result, for the products and for the weight
    gradient's ordered sum over the images."""
    from refdcn import driver
    a, b = _matmul_operands()
    assert 2 * 6 * 64 * 3000 * 300 >= parallel.SMALL_GEMM_FLOPS            # really split
    results = {}
    for threads in (1, 2, 3):
        parallel.set_num_threads(threads)
        try:
            out = np.empty((6, 64, 3000), np.float32)
            reduced = np.zeros((2, 64, 300), np.float32)
            with parallel.single_threaded_blas():
                driver.numpy_matmul(a, b, out, trans_b=True)
                driver.numpy_matmul(out, b, reduced, accumulate=True)
            results[threads] = (out, reduced)
        finally:
            parallel.set_num_threads(None)
    for threads in (2, 3):
        assert np.array_equal(results[threads][0], results[1][0])
        assert np.array_equal(results[threads][1], results[1][1])
    # the contract itself: out[z] = a[z % 2] @ b[z].T, and the short out sums in z order
    out, reduced = results[1]
    for z in range(6):
        _assert_within_product_bound(out[z], [(a[z % 2], b[z].T)])
    for g in range(2):
        _assert_within_product_bound(reduced[g], [(out[z], b[z]) for z in range(g, 6, 2)])


def test_products_stay_in_the_caller_without_a_controllable_blas(monkeypatch):
    """Without threadpoolctl's control of the BLAS (an unknown BLAS), the BLAS keeps its
    own threads and refdcn does not multiply them by its own: every slice runs in the
    calling thread."""
    from refdcn import driver
    a, b = _matmul_operands()
    callers = set()
    monkeypatch.setattr(parallel, "_blas_libraries", [])              # as with an unknown BLAS
    monkeypatch.setattr(parallel, "run", lambda n, task, threads=None: (
        callers.add(threads), [task(i) for i in range(n)]))
    out = np.empty((6, 64, 3000), np.float32)
    driver.numpy_matmul(a, b, out, trans_b=True)
    assert callers == {1}
    for z in range(6):
        _assert_within_product_bound(out[z], [(a[z % 2], b[z].T)])


def test_a_nested_call_runs_in_the_calling_thread():
    """run() called from a task runs its tasks in that task's thread (the pool is busy
    with the outer call), each exactly once: with idle workers to spare (a pool of 4) and
    inner tasks that wait, a nested call that used the pool would spread its tasks."""
    parallel.run(4, lambda i: time.sleep(0.01), threads=4)      # the pool has 3 workers
    inner = {}
    barrier = threading.Barrier(2, timeout=10)

    def outer(i):
        barrier.wait()               # both outer tasks in flight: two threads
        me = threading.get_ident()
        parallel.run(6, lambda j: (inner.setdefault((i, j), set()).add(threading.get_ident()),
                                   time.sleep(0.005)), threads=4)
        assert all(inner[(i, j)] == {me} for j in range(6))
    parallel.run(2, outer, threads=2)
    assert sorted(inner) == [(i, j) for i in range(2) for j in range(6)]
