"""Run an implementation in a child process, so that nothing it does can end the verifier.

:class:`Isolated` is an :class:`~refdcn.verify.adapters.Implementation` whose
calls go to a worker process started with multiprocessing's ``spawn`` context
(a fresh interpreter: no inherited threads, locks or CUDA state).  The worker
resolves the implementation itself (:func:`refdcn.verify.adapters.resolve`),
so an import that hangs, crashes or exits is caught too, and it sends its
standard output to standard error: user code that prints never reaches
``refdcn verify --json``.

Every call has a time limit.  Whatever goes wrong becomes an
:class:`ImplementationError` whose ``cause`` is one of

==============  ===============================================================
``timeout``     no result within the time limit (the worker is killed)
``crash``       the worker died from a signal (SIGSEGV, SIGABRT, SIGKILL, ...)
``exit``        the worker ended (``os._exit``, ``sys.exit`` at module level,
                ``exit()`` in C code) or called ``sys.exit`` during the call
``exception``   the call raised an exception
==============  ===============================================================

and the next call starts a fresh worker.  The runner turns the error into
that case's ERROR row (:mod:`refdcn.verify.runner`).
"""

import multiprocessing
import os
import signal
import sys

from .adapters import AdapterUnavailable, Implementation, ImplementationError, one_line

__all__ = ["Isolated", "ImplementationError", "DEFAULT_TIMEOUT", "one_line"]

#: Default time limit of one case (seconds): a conformance case takes well under a second
#: in any compiled implementation; the limit also covers the worker's start (imports).
DEFAULT_TIMEOUT = 60.0


def _exit_message(code, during="the call"):
    if code is None:
        return "exit", "the implementation's process ended without a result"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return "crash", f"the implementation's process was killed by {name}"
    return "exit", (f"the implementation's process exited with status {code} during "
                    f"{during} (os._exit, sys.exit or exit() in compiled code)")


def _serve(conn, spec, backward, opset):
    """The worker: resolve the implementation, then answer calls until told to stop."""
    os.dup2(2, 1)                      # user output goes to stderr, never to the JSON
    sys.stdout = sys.stderr
    from .adapters import resolve
    try:
        impl = resolve(spec, backward, opset=opset)
    except AdapterUnavailable as exc:
        conn.send(("unavailable", str(exc)))
        return
    except SystemExit as exc:
        conn.send(("unavailable", f"importing {spec!r} called sys.exit({exc.code!r})"))
        return
    except BaseException as exc:       # noqa: BLE001 - reported to the parent
        conn.send(("unavailable", f"loading {spec!r} failed: {one_line(exc)}"))
        return
    conn.send(("ready", (impl.name, impl.description, impl.native_convention,
                         impl.has_backward, impl.splittable)))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        method, args = message
        partial = {}
        try:
            if method == "results":
                case, convention, gradients = args
                partial["output"] = impl.forward(case)
                if gradients:
                    partial.update(impl.backward(case, convention))
                reply = ("ok", partial)
            else:
                reply = ("ok", getattr(impl, method)(*args))
        except SystemExit as exc:
            reply = ("error", "exit", f"the implementation called sys.exit({exc.code!r})",
                     partial)
        except BaseException as exc:   # noqa: BLE001 - the implementation's failure
            reply = ("error", "exception", one_line(exc), partial)
        try:
            conn.send(reply)
        except Exception as exc:       # noqa: BLE001 - e.g. an object array that won't pickle
            conn.send(("error", "not_numeric", f"the result cannot be sent back: "
                                               f"{one_line(exc)}", {}))


class Isolated(Implementation):
    """The implementation ``spec`` (as for :func:`~refdcn.verify.adapters.resolve`) in a child.

    Parameters
    ----------
    spec, backward, opset
        As :func:`refdcn.verify.adapters.resolve`.
    timeout : float
        Seconds one call (one case: forward and gradients together) may take.

    Raises
    ------
    AdapterUnavailable
        The implementation cannot be loaded, or loading it hangs, crashes or exits.
    """

    def __init__(self, spec, backward=None, opset=19, timeout=DEFAULT_TIMEOUT):
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
        self._args = (spec, backward, opset)
        self.timeout = float(timeout)
        self._proc = self._conn = None
        try:
            info = self._start()
        except ImplementationError as exc:
            raise AdapterUnavailable(f"loading {spec!r}: {exc}") from None
        (self.name, self.description, self.native_convention, self.has_backward,
         self.splittable) = info
        self.description += " (run in a child process)"

    # -- the worker
    def _start(self):
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,) + self._args, daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        reply = self._receive("the import")
        if reply[0] == "unavailable":
            self.close()
            raise AdapterUnavailable(reply[1])
        return reply[1]

    def _receive(self, during="the call"):
        try:
            ready = self._conn.poll(self.timeout)
        except (EOFError, OSError):
            ready = True
        if not ready:
            self.close(kill=True)
            raise ImplementationError("timeout", f"no result within {self.timeout:g} s (the "
                                                 f"call was stopped; see --timeout)")
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            cause, message = _exit_message(self._proc.exitcode, during)
            self.close(kill=True)
            raise ImplementationError(cause, message) from None

    def close(self, kill=False):
        """Stop the worker (the next call starts a new one)."""
        if self._proc is None:
            return
        try:
            if not kill and self._proc.is_alive():
                self._conn.send(None)
                self._proc.join(5)
        except (OSError, ValueError):
            pass
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        self._proc = self._conn = None

    def __del__(self):
        try:
            self.close()
        except Exception:              # noqa: BLE001 - interpreter shutdown
            pass

    def _call(self, method, *args):
        if self._proc is None or not self._proc.is_alive():
            self.close(kill=True)
            self._start()
        try:
            self._conn.send((method, args))
        except (OSError, ValueError):
            self._proc.join(5)
            cause, message = _exit_message(self._proc.exitcode)
            self.close(kill=True)
            raise ImplementationError(cause, message) from None
        reply = self._receive()
        if reply[0] == "error":
            raise ImplementationError(reply[1], reply[2], reply[3])
        return reply[1]

    # -- the Implementation interface
    def unsupported(self, case):
        return self._call("unsupported", case)

    def forward(self, case):
        return self._call("forward", case)

    def backward(self, case, convention):
        return self._call("backward", case, convention)

    def results(self, case, convention, gradients):
        return self._call("results", case, convention, gradients)
