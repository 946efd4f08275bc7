"""refdcn.parallel: every task runs once, errors reach the caller, fork is safe."""

import multiprocessing
import threading

import numpy as np
import pytest

from refdcn import parallel


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


def test_products_split_over_threads_give_the_same_bits(monkeypatch):
    """driver.numpy_matmul: sliced on refdcn's threads, or whole in the caller when the BLAS's
    threads cannot be set (no threadpoolctl): the same bits either way."""
    from refdcn import driver
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 64, 300)).astype(np.float32)
    b = rng.standard_normal((2, 3000, 300)).astype(np.float32)
    split = np.zeros((2, 64, 3000), np.float32)
    with parallel.single_threaded_blas():
        driver.numpy_matmul(a, b, split, trans_b=True)
    assert 2 * 64 * 3000 * 300 >= parallel.SMALL_GEMM_FLOPS            # really split
    callers = set()
    monkeypatch.setattr(parallel, "_blas_libraries", [])              # as without threadpoolctl
    monkeypatch.setattr(parallel, "run", lambda n, task, threads=None: (
        callers.add(threads), [task(i) for i in range(n)]))
    whole = np.zeros_like(split)
    driver.numpy_matmul(a, b, whole, trans_b=True)
    assert callers == {1}
    assert np.array_equal(split, whole)
