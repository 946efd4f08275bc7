"""``refdcn bench --first-call``: how long a fresh process waits for its first result.

A user's first call pays for what the process has not done yet: importing
NumPy and refdcn, and, for the ``"numba"`` backend, compiling its kernels
(Numba's JIT) unless an earlier process left them in the on-disk cache
(:mod:`refdcn.backends._numba_cache`).  Each measurement here is a new Python
process running the example of the README's "Using it" section (2 images, 4
input channels, 6 output channels, 8x8, 3x3 kernel, groups 2, with a mask):

``cold``
    an empty Numba cache directory (``NUMBA_CACHE_DIR``), as in a fresh
    install, or in every process of an install whose cache cannot be written
    (a read-only install compiles in memory, :mod:`refdcn.backends._numba_cache`);
``warm``
    the same directory again, filled by the cold process.

Each process reports the seconds from its start (after the interpreter is
up) to the end of ``import numpy, refdcn``, of the first forward and of the
first backward (:func:`refdcn.deform_conv2d_backward`).
"""

import json
import os
import subprocess
import sys
import tempfile

#: The code a measuring process runs: argv[1] is the backend name.
CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import refdcn
t_import = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
offset = rng.standard_normal((2, 18, 8, 8)).astype(np.float32)
mask = rng.random((2, 9, 8, 8)).astype(np.float32)
out = refdcn.deform_conv2d(x, offset, w, padding=1, mask=mask, backend=sys.argv[1])
t_forward = time.perf_counter()
refdcn.deform_conv2d_backward(np.ones_like(out), x, offset, w, padding=1, mask=mask,
                              backend=sys.argv[1])
t_backward = time.perf_counter()
from refdcn import backends
name = backends.fastest_cpu() if sys.argv[1] == "auto" else sys.argv[1]
print(json.dumps(dict(backend=name, import_s=t_import - t0, forward_s=t_forward - t0,
                      backward_s=t_backward - t0)))
"""

#: The 2-second target of issue 16 (first forward of ``backend="auto"``, cold).
TARGET_S = 2.0


def measure(backend, cache_dir):
    """One fresh process: the record of :data:`CHILD` for ``backend`` (raises RuntimeError)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run([sys.executable, "-c", CHILD, backend], capture_output=True,
                          text=True, env=env, cwd=tempfile.gettempdir())
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"the first-call process of backend {backend!r} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_first_call(backend_names, json_path=None, out=None):
    """Measure ``auto`` and each backend, cold then warm; print the table; return the records."""
    from .cpu import machine
    out = sys.stdout if out is None else out
    records = []
    for name in ["auto"] + [n for n in backend_names if n != "auto"]:
        with tempfile.TemporaryDirectory(prefix="refdcn-first-call-") as cache:
            for state in ("cold", "warm"):
                record = measure(name, cache)
                record.update(requested=name, cache=state)
                records.append(record)
    print(f"refdcn bench --first-call: {machine()}", file=out)
    print("seconds from the start of a fresh process (interpreter up) to the end of "
          "`import numpy, refdcn`, the first forward and the first backward (README example)",
          file=out)
    print(f"{'backend':<16} {'cache':<6} {'import s':>9} {'forward s':>10} {'backward s':>11}",
          file=out)
    for r in records:
        label = r["requested"] if r["requested"] == r["backend"] else \
            f"{r['requested']} ({r['backend']})"
        print(f"{label:<16} {r['cache']:<6} {r['import_s']:>9.2f} {r['forward_s']:>10.2f} "
              f"{r['backward_s']:>11.2f}", file=out)
    auto_cold = next(r for r in records if r["requested"] == "auto" and r["cache"] == "cold")
    verdict = "meets" if auto_cold["forward_s"] <= TARGET_S else "misses"
    print(f"backend='auto', cold: first forward after {auto_cold['forward_s']:.2f} s "
          f"({verdict} the {TARGET_S:g} s target)", file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(machine=machine(), records=records, target_s=TARGET_S), f, indent=1)
    return records
