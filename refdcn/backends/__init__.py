"""The backend registry: which implementations exist, which work here, and why not.

Backends are imported lazily, on first use, so importing refdcn never needs a
GPU, numba, numba-cuda, torch or the compiled Cython extension.

>>> import refdcn
>>> "reference" in refdcn.backends.available()
True

Every backend module provides::

    NAME, DESCRIPTION
    CAPABILITIES = Capabilities(...)   what it is (device, compute dtype, ...)
    forward(input, offset, mask, weight, bias, geom, dtype) -> output
    backward(grad_output, input, offset, mask, weight, bias, geom, dtype, convention)
        -> (grad_input, grad_offset, grad_mask, grad_weight, grad_bias)
    KERNELS                            its refdcn.driver.KernelSet (blocked backends)

and may raise :class:`BackendUnavailable` (or any other exception) at import
time, with the reason and how to fix it: the registry reports every failure
while loading a backend as "unavailable, because ...", never raises it.
Code and tests ask :func:`capabilities`, never compare backend names.
"""

from dataclasses import dataclass
import importlib

from ..install_hints import cython_hint

__all__ = ["BackendUnavailable", "Capabilities", "REGISTRY", "INSTALL_HINTS", "available",
           "unavailable", "get", "describe", "fastest_cpu", "capabilities"]


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here; the message says why and how to fix it."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend is, declared by its module as ``CAPABILITIES``.

    Attributes
    ----------
    device : str
        ``"cpu"`` (takes and returns NumPy arrays) or ``"cuda"`` (also device arrays).
    compute_dtype : str
        ``"input"``: float64 if any input is float64, else float32
        (:func:`refdcn.geometry.compute_dtype`); ``"float64"``: always float64.
    simulated : bool
        Runs on a simulator (Numba's CUDA simulator): exact but very slow.
    oracle : bool
        The explicit-loop reference the other backends are tested against.
    blocked : bool
        Built on :mod:`refdcn.driver` (module attribute ``KERNELS``): the
        column-memory bound applies and results do not depend on it.
    deterministic : bool
        Bitwise identical results run to run in the default mode.
    deterministic_option : bool
        Has a slower bitwise-deterministic mode for what is not deterministic
        by default, switched by the module's ``set_deterministic(flag)``
        (which returns the previous flag).
    threads : bool
        Runs its kernels on several CPU threads.
    """
    device: str = "cpu"
    compute_dtype: str = "input"
    simulated: bool = False
    oracle: bool = False
    blocked: bool = True
    deterministic: bool = True
    deterministic_option: bool = False
    threads: bool = False


#: name -> module implementing it, in order of preference for ``backend="auto"``
#: (the order is measured: see ``refdcn bench`` and the README).
REGISTRY = {
    "reference": "refdcn.reference.loops",
    "numpy": "refdcn.backends.numpy_cpu",
    "numba": "refdcn.backends.numba_cpu",
    "cython": "refdcn.backends.cython_cpu",
    "cuda": "refdcn.backends.cuda",
}

#: How to make each optional backend available (a string, or a function computing it).
INSTALL_HINTS = {
    "numba": "pip install numba",
    "cython": cython_hint,
    "cuda": "pip install 'refdcn[cuda]' (numba-cuda) on a machine with an NVIDIA GPU and driver, "
            "or set NUMBA_ENABLE_CUDASIM=1 to run on the CUDA simulator",
}

#: Preference order of CPU backends for ``backend="auto"``.  ``cython`` and ``numba``
#: run the same channels-last kernels (bitwise the same results) at the same speed
#: within the noise of ``refdcn bench`` (README, "Speed"); ``cython`` comes first because
#: it is compiled ahead of time: a fresh process's first call does not wait for Numba's
#: JIT (``refdcn bench --first-call``).  ``numba`` serves where the extension was not built.
AUTO_ORDER = ("cython", "numba", "numpy")

_modules = {}
_errors = {}


def _load(name):
    if name in _modules:
        return _modules[name]
    if name in _errors:
        return None
    try:
        module = importlib.import_module(REGISTRY[name])
    except Exception as exc:    # any failure means "unavailable, because ..."
        reason = str(exc) or type(exc).__name__
        if not isinstance(exc, (ImportError, BackendUnavailable)):
            reason = f"loading it raised {type(exc).__name__}: {reason}"
        hint = INSTALL_HINTS.get(name)
        hint = hint() if callable(hint) else hint
        # said once: a reason that already says what to install keeps its own advice
        said = hint and (hint in reason or "pip install" in reason and "pip install" in hint)
        _errors[name] = reason if not hint or said else f"{reason} (to enable: {hint})"
        return None
    _modules[name] = module
    return module


def available():
    """Names of the backends that work here, in registry order."""
    return [name for name in REGISTRY if _load(name) is not None]


def unavailable():
    """``{name: reason}`` for every backend that does not work here."""
    for name in REGISTRY:
        _load(name)
    return {name: _errors[name] for name in REGISTRY if name in _errors}


def fastest_cpu():
    """The backend ``backend="auto"`` uses: the first available of :data:`AUTO_ORDER`."""
    for name in AUTO_ORDER:
        if _load(name) is not None:
            return name
    return "numpy"


def get(name):
    """The module of backend ``name``; ``"auto"`` means :func:`fastest_cpu`.

    Raises
    ------
    ValueError
        For an unknown name.
    BackendUnavailable
        For a backend that does not work here, saying why and how to enable it.
    """
    if name == "auto":
        name = fastest_cpu()
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"backend must be 'auto' or one of {list(REGISTRY)}; got {name!r}")
    module = _load(name)
    if module is None:
        raise BackendUnavailable(f"backend {name!r} is not available here: {_errors[name]}")
    return module


def capabilities(name):
    """The :class:`Capabilities` of backend ``name`` (``"auto"``: :func:`fastest_cpu`).

    Raises
    ------
    ValueError
        For an unknown name.
    BackendUnavailable
        For a backend that does not work here.
    """
    return get(name).CAPABILITIES


def describe():
    """Rows ``(name, status, detail)`` for every registered backend."""
    rows = []
    missing = unavailable()
    for name in REGISTRY:
        if name in missing:
            rows.append((name, "unavailable", missing[name]))
        else:
            rows.append((name, "available", _modules[name].DESCRIPTION))
    return rows
