"""What to install, said once and exactly: optional extras and the source-tree trap.

Every message that asks the user to install something goes through
:func:`extra_command` (the exact ``pip install 'refdcn[EXTRA]'`` line) or
:func:`require`; :func:`source_tree_hint` explains why the compiled Cython
extension is missing when Python imports refdcn from a source checkout.

The extras (``pyproject.toml``): ``cuda`` (numba-cuda), ``torch``
(:mod:`refdcn.torch`), ``onnx`` (onnx + onnxruntime), ``peers`` (torch,
torchvision, onnx, onnxruntime: the peers of ``refdcn verify`` and
``refdcn bench``), ``bench`` (tqdm), ``experiment`` (mlxtend,
matplotlib, tqdm), ``notebooks``, ``docs``, ``test`` and ``test-light``.
"""

import importlib
import os

__all__ = ["extra_command", "require", "optional", "source_tree_hint", "cython_hint"]


def extra_command(extra):
    """The one command that installs an extra: ``pip install 'refdcn[EXTRA]'``."""
    return f"pip install 'refdcn[{extra}]'"


def require(module, extra, purpose):
    """Import ``module`` or raise ImportError saying which extra brings it.

    Parameters
    ----------
    module : str
        Module to import (``"matplotlib.pyplot"``).
    extra : str
        The extra of refdcn that installs it.
    purpose : str
        What needs it, for the message (``"the accuracy plot"``).

    Raises
    ------
    ImportError
        ``"<purpose> needs <package>: pip install 'refdcn[<extra>]'"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise ImportError(f"{purpose} needs {package}: {extra_command(extra)}") from None


def optional(module):
    """``module`` if it can be imported, else None (for features that degrade silently)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _installed_copy():
    """The folder holding an installed refdcn distribution, or None."""
    try:
        from importlib import metadata
        dist = metadata.distribution("refdcn")
    except Exception:                  # not installed (or broken metadata)
        return None
    located = getattr(dist, "locate_file", None)
    return os.path.realpath(str(located(""))) if located else None


def source_tree_hint(package_dir=None):
    """Why the extension is missing, if refdcn is imported from a source checkout; else None.

    A checkout (``setup.py`` and ``pyproject.toml`` beside the package) has no
    compiled extension unless it was built in place.  After ``pip install .``
    a Python started *inside* the checkout imports the checkout (the current
    folder comes first on ``sys.path``), not the installed copy that has the
    extension: reinstalling does not help, and ``refdcn check`` (which runs
    the installed copy) disagrees.  The hint says so and what to do.

    Parameters
    ----------
    package_dir : str, optional
        The folder of the imported ``refdcn`` package (default: this one).
    """
    package_dir = os.path.realpath(package_dir or os.path.dirname(os.path.abspath(__file__)))
    root = os.path.dirname(package_dir)
    if not all(os.path.exists(os.path.join(root, f)) for f in ("setup.py", "pyproject.toml")):
        return None
    installed = _installed_copy()
    build = "python setup.py build_ext --inplace (or pip install -e .)"
    if (installed and installed != os.path.realpath(root)
            and os.path.exists(os.path.join(installed, "refdcn", "__init__.py"))):
        return (f"Python imported refdcn from the source tree {root} (it was started there), "
                f"not the installed copy in {installed}, which has the extension: run Python "
                f"from another folder, or build the extension in the source tree: {build}")
    return (f"Python imported refdcn from the source tree {root}, where the extension was not "
            f"built: build it in place: {build} (needs a C compiler and Cython)")


def cython_hint():
    """How to make the ``cython`` backend available here (the registry's hint)."""
    return source_tree_hint() or "reinstall refdcn from source with a C compiler: pip install ."
