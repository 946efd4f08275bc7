"""Numba's on-disk cache, keyed on every source file a compiled kernel depends on.

Numba's own cache (``cache=True``) checks only the file that defines the
kernel; the kernels of :mod:`refdcn.backends.numba_cpu` inline the functions
of :mod:`refdcn.bilinear` (and read :mod:`refdcn.geometry`'s record), so an
edit there would leave stale machine code in use.  Here the cache index of
every kernel is stamped with the SHA-256 of all of :data:`DEPENDENCIES`, and
lives in a subdirectory named after that hash: machine code compiled from any
other version of any of these files is never loaded.

Where: ``NUMBA_CACHE_DIR`` if set, else the ``__pycache__`` directory of
``refdcn/backends``, else Numba's user-wide cache directory (as Numba
itself).  If none is writable (read-only install and read-only home), the
kernels are compiled in memory at every start, with one warning.
"""

import hashlib
import os
import pathlib
import tempfile
import warnings

from numba.core import caching, config
from numba.misc.appdirs import AppDirs

#: The files (relative to the refdcn package) whose contents the Numba CPU kernels depend on.
DEPENDENCIES = ("bilinear.py", "geometry.py", "backends/_shared_math.py", "backends/_tasks.py",
                "backends/numba_cpu.py", "backends/numba_dcnv3.py")

_PACKAGE = pathlib.Path(__file__).resolve().parent.parent


def source_hash(paths=DEPENDENCIES, root=_PACKAGE):
    """SHA-256 hex digest of the names and contents of ``paths`` (relative to ``root``)."""
    digest = hashlib.sha256()
    for name in paths:
        digest.update(name.encode() + b"\0")
        digest.update((root / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _candidates():
    if config.CACHE_DIR:
        yield config.CACHE_DIR
    yield str(_PACKAGE / "backends" / "__pycache__")
    yield AppDirs(appname="numba", appauthor=False).user_cache_dir


def cache_directory(digest):
    """The first writable ``<base>/refdcn-<hash>`` of the candidates, or None."""
    for base in _candidates():
        path = os.path.join(base, f"refdcn-{digest[:16]}")
        if _writable(path):
            return path
    return None


class _HashLocator(caching._CacheLocator):
    """Cache files of one kernel in :attr:`directory`, stamped with :attr:`digest`."""
    directory = None
    digest = None

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno

    def get_cache_path(self):
        return self.directory

    def get_source_stamp(self):
        return self.digest

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func, py_file)


class _HashImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_HashLocator]


class HashedFunctionCache(caching.FunctionCache):
    """A Numba function cache that uses :class:`_HashLocator`."""
    _impl_class = _HashImpl


_state = {}


def enable(dispatcher):
    """Give a Numba dispatcher (compiled with ``cache=False``) the hash-keyed disk cache.

    Without a writable directory the dispatcher keeps compiling in memory, and
    the first call warns (once per process) that nothing is cached.
    """
    if "directory" not in _state:
        _state["digest"] = digest = source_hash()
        _state["directory"] = cache_directory(digest)
        _HashLocator.digest = digest
        _HashLocator.directory = _state["directory"]
    if _state["directory"] is None:
        if not _state.get("warned"):
            _state["warned"] = True
            warnings.warn("refdcn: no writable directory for Numba's kernel cache (set "
                          "NUMBA_CACHE_DIR to one); the numba backend compiles its kernels "
                          "at every start", RuntimeWarning, stacklevel=3)
        return dispatcher
    dispatcher._cache = HashedFunctionCache(dispatcher.py_func)
    return dispatcher
