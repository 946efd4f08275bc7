"""refdcn's own worker threads: the parallel loops of the compiled CPU kernels.

The compiled kernels are serial functions over a range of *tasks* (for
example, chunks of output pixels of an image) that release the GIL; this
module runs the tasks of one call on a small pool of Python threads, the
calling thread included.  Owning the threads, rather than using Numba's
threading layers or OpenMP, makes refdcn's speed independent of what else the
process does:

* no call order matters: Numba's threading layer is chosen once per process,
  by whoever first runs parallel Numba code or calls
  ``numba.set_num_threads()`` (issue 12, item 9), and GNU OpenMP's idle
  threads spin for milliseconds after each parallel loop unless
  ``OMP_WAIT_POLICY=PASSIVE`` was set before the runtime loaded -- which
  torch does first when it is imported first.  Idle workers here sleep on a
  condition variable: they never take a core from the BLAS threads of the
  matrix products between the kernels, nor from anyone else;
* starved threads cost little: tasks are handed out one at a time from a
  shared counter (dynamic scheduling) and the caller works too, so when
  another process holds a core, the threads that do run take over the tasks
  of the one that does not, and the call waits only for tasks already
  started -- never for a worker that has not woken up yet.  With one of two
  cores busy, a call degrades to about the time of one thread instead of
  waiting for the scheduler at every parallel loop;
* ``fork`` is safe: a child process starts a new pool on its first call
  (threads do not survive ``fork``);
* no environment variable is needed.

Which task runs on which thread varies from call to call, so the kernels must
give each task its own outputs (and scratch memory): then the results do not
depend on the schedule or on the number of threads.

Threads: :func:`set_num_threads` (default: the CPUs this process may run on,
``os.sched_getaffinity``).

The BLAS's own threads split every product statically, so a product waits
for its slowest thread: the driver therefore runs the BLAS single-threaded
(:func:`single_threaded_blas`) and splits the products over these threads
(:func:`refdcn.driver.numpy_matmul`, :data:`SMALL_GEMM_FLOPS`).
"""

from contextlib import contextmanager
import itertools
import os
import threading

__all__ = ["num_threads", "set_num_threads", "run", "default_threads", "single_threaded_blas",
           "blas_is_controllable", "SMALL_GEMM_FLOPS"]

#: Matrix products of fewer floating-point operations than this are not split
#: over the threads (:func:`refdcn.driver.numpy_matmul`): each runs in the calling
#: thread as one single-threaded BLAS call.  Such a product takes well under a
#: millisecond on one core; a second thread saves at most half of that, but costs
#: a hand-over per product, and on a machine where another job holds a core the
#: product waits for the starved thread (measured: a 0.07 ms product took 8 ms).
SMALL_GEMM_FLOPS = 2**25


def default_threads():
    """The number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):      # not Linux
        return max(1, os.cpu_count() or 1)


_threads = None


def num_threads():
    """Threads a parallel call uses, the caller included (:func:`set_num_threads`)."""
    return default_threads() if _threads is None else _threads


def set_num_threads(threads):
    """Set the threads of refdcn's compiled CPU kernels; ``None`` restores the default.

    Parameters
    ----------
    threads : int or None
        At least 1 (1: every kernel runs in the calling thread); None: the
        CPUs this process may run on.

    Raises
    ------
    TypeError
        If ``threads`` is not an int (bools are refused).
    ValueError
        If ``threads < 1``.
    """
    global _threads
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int):
            try:
                import numpy as np
                ok = isinstance(threads, np.integer)
            except ImportError:      # pragma: no cover - numpy is a dependency
                ok = False
            if not ok:
                raise TypeError(f"threads must be an int or None; got {threads!r} "
                                f"({type(threads).__name__})")
        if threads < 1:
            raise ValueError(f"threads must be at least 1; got {threads!r}")
        threads = int(threads)
    _threads = threads


class _Job:
    """The tasks ``0 .. n-1`` of one call, handed out one at a time, to at most
    ``helpers`` workers besides the caller."""

    def __init__(self, n, task, helpers=0):
        self.n = n
        self.task = task
        self.helpers = helpers
        self.take = itertools.count().__next__      # atomic under the GIL
        self.lock = threading.Lock()
        self.finished = 0
        self.done = threading.Event()
        self.error = None

    def join(self):
        """A worker joins if the job still wants a helper."""
        with self.lock:
            if self.helpers <= 0:
                return
            self.helpers -= 1
        self.work()

    def work(self):
        outer, _inside.task = getattr(_inside, "task", False), True
        try:
            while True:
                i = self.take()
                if i >= self.n:
                    return
                try:
                    self.task(i)
                except BaseException as exc:   # re-raised in the caller
                    if self.error is None:
                        self.error = exc
                with self.lock:
                    self.finished += 1
                    if self.finished == self.n:
                        self.done.set()
        finally:
            _inside.task = outer


#: ``_inside.task`` is true in a thread while it runs tasks of a parallel :func:`run`
#: (one handed to the pool; tasks run in the calling thread alone do not set it, so a
#: call nested in them may use the pool, which is then idle).
_inside = threading.local()


class _Pool:
    """Sleeping worker threads that join the latest job when woken."""

    def __init__(self, workers):
        self.workers = workers
        self.cv = threading.Condition()
        self.job = None
        self.generation = 0
        for _ in range(workers):
            threading.Thread(target=self._worker, name="refdcn-worker", daemon=True).start()

    def _worker(self):
        seen = 0
        while True:
            with self.cv:
                while self.generation == seen:
                    self.cv.wait()
                seen = self.generation
                job = self.job
            if job is not None:
                job.join()
            job = None      # hold no finished job: its task's arrays must be freed

    def run(self, job):
        with self.cv:
            self.job = job
            self.generation += 1
            self.cv.notify(job.helpers)
        job.work()
        job.done.wait()
        with self.cv:
            if self.job is job:
                self.job = None


_pool = None
_pool_lock = threading.Lock()


def _get_pool(workers):
    global _pool
    with _pool_lock:
        if _pool is None or _pool.workers < workers:
            _pool = _Pool(workers)      # an old, smaller pool's threads just stay asleep
        return _pool


def _forget_pool():
    """In a forked child: the parent's threads are gone; start afresh on the next call."""
    global _pool, _pool_lock, _blas_lock, _blas_users
    _pool = None
    _pool_lock = threading.Lock()
    _blas_lock = threading.Lock()
    _blas_users = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run(n, task, threads=None):
    """Run ``task(i)`` for ``i`` in ``range(n)`` on up to ``threads`` threads; wait for all.

    The calling thread takes tasks too; ``task`` must release the GIL to run
    in parallel (Numba ``nogil=True``, Cython ``with nogil``).  Tasks may run
    in any order and on any thread.  The first exception raised by a task is
    re-raised here, after every started task has finished.  Called from a
    task of a parallel call (nested), it runs every task in the calling
    thread: the threads are busy with the outer call already.  In the calling thread alone (one
    thread, one task, or nested) the tasks run in order, and an exception
    stops them.

    Parameters
    ----------
    n : int
        Number of tasks.
    task : callable
        ``task(i)``.
    threads : int, optional
        Default :func:`num_threads`; 1 runs every task in the calling thread.
    """
    threads = num_threads() if threads is None else threads
    if n <= 0:
        return
    if threads <= 1 or n == 1 or getattr(_inside, "task", False):
        for i in range(n):
            task(i)
        return
    job = _Job(n, task, min(threads - 1, n - 1))
    _get_pool(job.helpers).run(job)
    job.task = None          # a late worker may still hold the job: not its arrays
    if job.error is not None:
        raise job.error


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved = None
_blas_libraries = None


def _blas_controllers():
    """threadpoolctl's controllers of the BLAS libraries loaded here ([] without threadpoolctl)."""
    global _blas_libraries
    if _blas_libraries is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas_libraries = list(ThreadpoolController().select(user_api="blas")
                                   .lib_controllers)
        except Exception:       # not installed, or an unknown BLAS: leave the BLAS alone
            _blas_libraries = []
    return _blas_libraries


def blas_is_controllable():
    """Whether :func:`single_threaded_blas` can set the BLAS's threads here (threadpoolctl)."""
    return bool(_blas_controllers())


@contextmanager
def single_threaded_blas(active=True):
    """Run the BLAS on one thread inside this block (when ``active``).

    The driver holds it for every call whose products it splits over
    refdcn's threads.  Nested and concurrent blocks are counted: the first sets the BLAS to one
    thread, the last restores what it was.  The setting is process-wide
    while a block runs (as with ``threadpoolctl.threadpool_limits``), so BLAS
    calls made by other threads meanwhile run on one thread too.  Uses
    threadpoolctl when it is installed; without it this does nothing.
    """
    libraries = _blas_controllers() if active else []
    if not libraries:
        yield
        return
    global _blas_users, _blas_saved
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = [lib.get_num_threads() for lib in libraries]
            for lib in libraries:
                lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, threads in zip(libraries, _blas_saved):
                    lib.set_num_threads(threads)
