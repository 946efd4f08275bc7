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
    ``interpolate`` calls ``corner_weights``, ``corners`` calls ``pixel``...).
    The functions of bilinear that a listed one calls are compiled first,
    whether listed or not, so a caller never meets a Python function.

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
        objects) and the compiled functions, for ``names`` and their callees.
    """
    namespace = dict(vars(bilinear))
    sources, compiled = {}, {}

    def compile_one(name):
        if name in compiled:
            return
        source = getattr(bilinear, name)
        for callee in source.__code__.co_names:
            if callee != name and isinstance(getattr(bilinear, callee, None), types.FunctionType):
                compile_one(callee)
        clone = types.FunctionType(source.__code__, namespace, source.__name__,
                                   source.__defaults__, source.__closure__)
        clone.__doc__ = source.__doc__
        clone.__qualname__ = source.__qualname__
        sources[name] = clone
        compiled[name] = namespace[name] = decorator(clone)

    for name in names:
        compile_one(name)
    return sources, compiled
