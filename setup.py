"""Build script: the pure-Python package plus the optional Cython extension.

The extension (``refdcn._cy.kernels``, sources in ``refdcn/_cy``) is compiled
with OpenMP when the compiler accepts ``-fopenmp`` and serially otherwise.  If
it cannot be built at all, installation still succeeds and the ``"cython"``
backend is reported as unavailable (``refdcn.backends.unavailable()``).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from glob import glob

from setuptools import Extension, setup


def openmp_flags():
    """(compile, link) flags for OpenMP, or empty lists if the compiler lacks it."""
    if os.environ.get("REFDCN_NO_OPENMP"):
        return [], []
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return [], []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        ok = subprocess.run([cc, "-fopenmp", src, "-o", os.path.join(tmp, "t")],
                            capture_output=True).returncode == 0
    return (["-fopenmp"], ["-fopenmp"]) if ok else ([], [])


def extensions():
    sources = sorted(glob(os.path.join("refdcn", "_cy", "*.pyx")))
    if not sources:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("refdcn: Cython not found, building without the 'cython' backend", file=sys.stderr)
        return []
    cflags, lflags = openmp_flags()
    print(f"refdcn: OpenMP {'on' if cflags else 'off'} for the Cython extension", file=sys.stderr)
    exts = [Extension(src[:-4].replace(os.sep, "."), [src],
                      extra_compile_args=["-O3", "-ffp-contract=off"] + cflags,
                      extra_link_args=lflags,
                      define_macros=[("REFDCN_OPENMP", "1" if cflags else "0")],
                      optional=True)
            for src in sources]
    try:
        return cythonize(exts, compiler_directives={"language_level": "3"},
                         compile_time_env={"REFDCN_OPENMP": bool(cflags)})
    except Exception as exc:
        # A Cython error must not fail the install: the backend is then listed as
        # unavailable, and CI's REFDCN_REQUIRE_CYTHON=1 test fails loudly.
        print(f"refdcn: WARNING: could not cythonize the extension ({exc}); "
              "the 'cython' backend will be unavailable", file=sys.stderr)
        return []


setup(ext_modules=extensions())
