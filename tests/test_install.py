"""The installed package in unusual states, each in a fresh process on a copy of the package.

* Editing a source a compiled Numba kernel depends on (here ``bilinear.corner_weights``)
  never leaves machine code compiled from the old source in use, with the disk cache
  populated by an earlier run.
* A read-only package directory and a read-only home: the numba backend works (compiled in
  memory, one warning).
* Any exception while loading a backend makes it "unavailable, because ...", never an error
  of ``backends.available()``, ``backend="auto"`` or ``refdcn.nn``.
"""

import os
import pathlib
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from refdcn import backends

ROOT = pathlib.Path(__file__).resolve().parent.parent / "refdcn"

pytestmark = pytest.mark.skipif("numba" not in backends.available(),
                                reason="numba backend not available")

# forward of one small case on the numba backend, and what the numpy backend computes with
# the same (possibly edited) bilinear.py; prints both, and the warnings raised
_SCRIPT = textwrap.dedent("""
    import json, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import refdcn
        from refdcn.testing import make_case
        case = make_case(seed=3, batch=1, in_channels=2, out_channels=2, height=4, width=5,
                         kernel=(2, 3), padding=1, groups=1, offset_groups=1)
        numba_out = refdcn.deform_conv2d(*case.args(), backend="numba")
        numba_out = refdcn.deform_conv2d(*case.args(), backend="numba")
        numpy_out = refdcn.deform_conv2d(*case.args(), backend="numpy")
        ref_out = refdcn.deform_conv2d(*case.args(), backend="reference")
    print(json.dumps({"numba": numba_out.tolist(), "numpy": numpy_out.tolist(),
                      "reference": ref_out.tolist(),
                      "warnings": [str(w.message) for w in caught
                                   if "refdcn" in str(w.message)],
                      "available": refdcn.backends.available()}))
""")


def _copy_package(tmp_path):
    dest = tmp_path / "pkg"
    shutil.copytree(ROOT, dest / "refdcn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    return dest


def _run(pkg, env_extra, tmp_path):
    import json
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(PYTHONPATH=str(pkg), **env_extra)
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_editing_bilinear_recompiles_the_numba_kernels(tmp_path):
    """Run 1 caches kernels; then ``corner_weights`` is edited (weights doubled) and runs 2
    and 3 (cold, then from the cache of run 2) compute the edited function: numba agrees with
    the numpy backend of the same edited copy, and no longer with the unedited reference."""
    pkg = _copy_package(tmp_path)
    cache = tmp_path / "cache"
    env = {"NUMBA_CACHE_DIR": str(cache), "HOME": str(tmp_path)}
    before = _run(pkg, env, tmp_path)
    np.testing.assert_allclose(before["numba"], before["reference"], rtol=1e-5, atol=1e-6)
    assert any(cache.rglob("*.nbi")), "the first run should have populated the cache"

    source = pkg / "refdcn" / "bilinear.py"
    text = source.read_text()
    anchor = "def corner_weights(ly, lx):"
    assert anchor in text
    body_start = text.index(anchor)
    ret = text.index("    return ", body_start)
    line_end = text.index("\n", ret)
    returned = text[ret + len("    return "):line_end]
    text = (text[:ret] + "    w00, w01, w10, w11 = " + returned + "\n"
            + "    return 2.0 * w00, 2.0 * w01, 2.0 * w10, 2.0 * w11" + text[line_end:])
    source.write_text(text)

    for _ in range(2):
        after = _run(pkg, env, tmp_path)
        np.testing.assert_allclose(after["numba"], after["numpy"], rtol=1e-5, atol=1e-6)
        assert not np.allclose(after["numba"], before["numba"], rtol=1e-3, atol=1e-3)
        # the edited reference would double too; the unedited run is the old function
        np.testing.assert_allclose(after["numpy"], after["reference"], rtol=1e-5, atol=1e-6)


def _read_only(path):
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_read_only_package_and_home(tmp_path):
    """No writable cache directory anywhere: numba still works, and warns once.

    The package and the home are made read-only (``chmod a-w``); since root ignores
    permissions, the directories Numba would create there are also blocked by a file of the
    same name (``backends/__pycache__``, ``~/.cache``)."""
    pkg = _copy_package(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (pkg / "refdcn" / "backends" / "__pycache__").write_text("not a directory")
    (home / ".cache").write_text("not a directory")
    _read_only(pkg)
    _read_only(home)
    try:
        result = _run(pkg, {"HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}, tmp_path)
    finally:
        for p in [pkg, home, *pkg.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert "numba" in result["available"]
    np.testing.assert_allclose(result["numba"], result["reference"], rtol=1e-5, atol=1e-6)
    assert len(result["warnings"]) == 1 and "NUMBA_CACHE_DIR" in result["warnings"][0]


_BROKEN = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import refdcn
    from refdcn import backends
    from refdcn.testing import make_case
    backends.REGISTRY["numba"] = "broken_backend"
    print(json.dumps({"available": backends.available(), "unavailable": backends.unavailable(),
                      "auto": backends.fastest_cpu(),
                      "runs": float(abs(refdcn.deform_conv2d(
                          *make_case(seed=1).args(), backend="auto")).sum())}))
""")


@pytest.mark.parametrize("error", ["RuntimeError('disk on fire')", "KeyError('x')",
                                   "ZeroDivisionError()"])
def test_any_load_failure_makes_a_backend_unavailable(tmp_path, error):
    import json
    (tmp_path / "broken_backend.py").write_text(f"raise {error}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT.parent))
    done = subprocess.run([sys.executable, "-c", _BROKEN, str(tmp_path)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "numba" not in result["available"] and result["auto"] != "numba"
    reason = result["unavailable"]["numba"]
    assert error.split("(")[0] in reason, reason
    assert result["runs"] > 0
