"""Build script: the pure-Python package plus the optional Cython extension.

The extension (``refdcn._cy.kernels``, sources in ``refdcn/_cy``) is compiled
without OpenMP: its kernels are serial functions over ranges of tasks, run on
refdcn's own threads (:mod:`refdcn.parallel`).  If it cannot be built at all,
installation still succeeds and the ``"cython"`` backend is reported as
unavailable (``refdcn.backends.unavailable()``).
"""

import os
import sys
from glob import glob

from setuptools import Extension, setup


def extensions():
    sources = sorted(glob(os.path.join("refdcn", "_cy", "*.pyx")))
    if not sources:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("refdcn: Cython not found, building without the 'cython' backend", file=sys.stderr)
        return []
    exts = [Extension(src[:-4].replace(os.sep, "."), [src],
                      extra_compile_args=["-O3", "-ffp-contract=off"],
                      optional=True)
            for src in sources]
    try:
        return cythonize(exts, compiler_directives={"language_level": "3"})
    except Exception as exc:
        # A Cython error must not fail the install: the backend is then listed as
        # unavailable, and CI's REFDCN_REQUIRE_CYTHON=1 test fails loudly.
        print(f"refdcn: WARNING: could not cythonize the extension ({exc}); "
              "the 'cython' backend will be unavailable", file=sys.stderr)
        return []


setup(ext_modules=extensions())
