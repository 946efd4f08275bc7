"""Build script: the pure-Python package plus the optional Cython extension.

The extension (``refdcn._cy.kernels``, sources in ``refdcn/_cy``) is compiled
without OpenMP: its kernels are serial functions over ranges of tasks, run on
refdcn's own threads (:mod:`refdcn.parallel`).  It is compiled for the CPU
it is built on (``-march=native``, when the compiler accepts it), as Numba
compiles the numba backend: the channel loops then use the widest vectors
(AVX2: twice SSE2's), with the same results (``-ffp-contract=off``: no FMA
contraction).  Set ``REFDCN_PORTABLE_BUILD=1`` to build for the baseline
instruction set instead (a wheel for other machines).  If it cannot be built at
all, installation still succeeds and the ``"cython"`` backend is reported as
unavailable (``refdcn.backends.unavailable()``).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from glob import glob

from setuptools import Extension, setup


def native_flags():
    """``["-march=native"]`` if the compiler accepts it and no portable build was asked for."""
    if os.environ.get("REFDCN_PORTABLE_BUILD") == "1":
        return []
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("int main(void){return 0;}\n")
        ok = subprocess.run([cc, "-march=native", src, "-o", os.path.join(tmp, "t")],
                            capture_output=True).returncode == 0
    return ["-march=native"] if ok else []


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
                      extra_compile_args=["-O3", "-ffp-contract=off"] + native_flags(),
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
