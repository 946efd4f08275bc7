"""Compile the scalar functions of :mod:`refdcn.bilinear` for a Numba target.

Used by the Numba CPU backend (``njit(inline="always")``) and the Numba CUDA backend
(``cuda.jit(device=True)``): both compile the one source of the math, never a copy.
"""

import types

from .. import bilinear


def compile_bilinear(decorator, names):
    """Compile functions of :mod:`refdcn.bilinear` with ``decorator``.

    Each function is compiled from its own code object, in a copy of the
    bilinear module's namespace where the other shared functions are replaced
    by their compiled versions (compiled code can only call compiled code:
    ``interpolate`` calls ``corner_weights``, ``corners`` calls ``pixel``...),
    so ``names`` must list callees before their callers.

    Parameters
    ----------
    decorator : callable
        E.g. ``numba.njit(inline="always")`` or ``numba.cuda.jit(device=True)``.
    names : sequence of str
        Names of functions of :mod:`refdcn.bilinear`.

    Returns
    -------
    sources, compiled : dict, dict
        By name: the Python functions handed to the compiler (bilinear's code
        objects) and the compiled functions.
    """
    namespace = dict(vars(bilinear))
    sources, compiled = {}, {}
    for name in names:
        source = getattr(bilinear, name)
        clone = types.FunctionType(source.__code__, namespace, source.__name__,
                                   source.__defaults__, source.__closure__)
        clone.__doc__ = source.__doc__
        clone.__qualname__ = source.__qualname__
        sources[name] = clone
        compiled[name] = namespace[name] = decorator(clone)
    return sources, compiled
