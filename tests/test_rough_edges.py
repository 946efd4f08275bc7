"""What a new user meets: lean dependencies, install messages said once and exactly, the
source-tree trap explained, file-like CLI arguments hinted, ONNX omissions explained."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from refdcn import backends, cli, install_hints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    try:
        import tomllib
    except ImportError:                                    # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_core_dependencies_are_numpy_numba_and_threadpoolctl_only():
    """threadpoolctl (pure Python, no dependencies) lets the driver run the BLAS on one
    thread per product (refdcn/parallel.py): without it the BLAS keeps its own threads,
    whose results differ in the last bits, and the forward does not fuse."""
    names = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in _pyproject()["dependencies"]}
    assert names == {"numpy", "numba", "threadpoolctl"}


def test_every_named_extra_exists_and_test_installs_the_peers():
    """Each extra that a message names is defined; CI's full `test` extra keeps the peers."""
    extras = _pyproject()["optional-dependencies"]
    source = ""
    for folder, _, files in os.walk(os.path.join(ROOT, "refdcn")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    source += f.read()
    named = set(re.findall(r"refdcn\[([a-z-]+)\]", source))
    named |= set(re.findall(r"""extra_command\(\s*["']([a-z-]+)["']""", source))
    named |= set(re.findall(r"""require\(\s*["'][\w.]+["']\s*,\s*["']([a-z-]+)["']""", source))
    assert named and named <= set(extras), named - set(extras)
    full = {re.split(r"[<>=!~ ]", d)[0] for d in extras["test"]}
    light = {re.split(r"[<>=!~ ]", d)[0] for d in extras["test-light"]}
    assert {"torch", "torchvision", "onnx", "onnxruntime"} <= full
    assert not {"torch", "torchvision", "onnx", "onnxruntime"} & light
    assert light <= full
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert 'pip install ".[test]"' in f.read()


def test_importing_refdcn_imports_no_optional_package():
    code = ("import sys, refdcn, refdcn.nn, refdcn.verify, refdcn.cli\n"
            "bad = {'matplotlib', 'tqdm', 'threadpoolctl', 'torch', 'onnx', 'mlxtend'} & "
            "set(sys.modules)\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_require_names_the_extra_once():
    with pytest.raises(ImportError) as info:
        install_hints.require("refdcn_no_such_module.sub", "experiment", "the plot")
    message = str(info.value)
    assert message == ("the plot needs refdcn_no_such_module: "
                       "pip install 'refdcn[experiment]'")
    assert install_hints.optional("refdcn_no_such_module") is None


@pytest.mark.parametrize("reason", [
    "numba-cuda is not installed (pip install 'refdcn[cuda]')",
    "no CUDA GPU here",
])
def test_registry_says_how_to_install_once(monkeypatch, reason):
    """A reason that already says what to install is not followed by a second hint."""
    monkeypatch.setitem(backends.REGISTRY, "fake", "refdcn_fake_backend_module")
    monkeypatch.setitem(backends.INSTALL_HINTS, "fake", "pip install 'refdcn[cuda]' on a GPU")
    monkeypatch.setitem(sys.modules, "refdcn_fake_backend_module", None)
    monkeypatch.delitem(backends._errors, "fake", raising=False)

    real = backends.importlib.import_module

    def fail(name, *args):
        if name == "refdcn_fake_backend_module":
            raise ImportError(reason)
        return real(name, *args)

    monkeypatch.setattr(backends.importlib, "import_module", fail)
    try:
        message = backends.unavailable()["fake"]
    finally:
        backends._errors.pop("fake", None)
    assert message.count("pip install") == 1, message
    assert message.startswith(reason)


def test_unavailable_reasons_name_each_install_command_at_most_once():
    for name, reason in backends.unavailable().items():
        assert reason.count("refdcn[") <= 1, (name, reason)


@pytest.fixture
def bare_checkout(tmp_path):
    """A copy of the source tree without the compiled extension (a fresh clone)."""
    root = tmp_path / "clone"
    shutil.copytree(os.path.join(ROOT, "refdcn"), root / "refdcn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.c"))
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), root / name)
    return root


def test_source_tree_trap_is_explained(bare_checkout):
    """Python started in a clone imports the clone, which has no extension: say so, and how
    to build in place, instead of "reinstall" (which the user just did)."""
    code = "import refdcn; print(refdcn.backends.unavailable()['cython'])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NUMBA_ENABLE_CUDASIM"] = "1"
    out = subprocess.run([sys.executable, "-c", code], cwd=bare_checkout, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "source tree" in out and str(bare_checkout) in out
    assert "build_ext --inplace" in out
    assert "reinstall" not in out


def test_source_tree_hint_with_an_installed_copy(bare_checkout, tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    (site / "refdcn").mkdir(parents=True)
    (site / "refdcn" / "__init__.py").write_text("")
    monkeypatch.setattr(install_hints, "_installed_copy", lambda: str(site))
    hint = install_hints.source_tree_hint(str(bare_checkout / "refdcn"))
    assert "not the installed copy in " + str(site) in hint
    assert "another folder" in hint
    assert install_hints.source_tree_hint(str(site / "refdcn")) is None   # not a checkout


@pytest.mark.parametrize("argv,hint", [
    (["mydcn.py:fn"], "refdcn verify mydcn:fn"),
    (["./mydcn.py"], "refdcn verify mydcn:FUNCTION"),
    (["sub/mydcn.py:fn"], "refdcn verify mydcn:fn from its folder (cd sub)"),
    (["mydcn:fn", "--backward", "mydcn.py:grad"], "--backward mydcn:grad"),
])
def test_verify_hints_at_files(tmp_path, monkeypatch, capsys, argv, hint):
    (tmp_path / "mydcn.py").write_text("def fn(*args, **kwargs):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["verify"] + argv) == 2
    err = capsys.readouterr().err
    assert "looks like a file" in err and hint in err
    assert err.count("hint:") == 1


def test_vectors_manifest_says_why_a_case_is_not_in_onnx(tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "v"
    assert cli.main(["vectors", "export", str(out), "--case", "batch0", "--case",
                     "onnx_with_padding"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {e["name"]: e for e in manifest["cases"]}
    assert by_name["onnx_with_padding"]["onnx_omitted"] is None
    reason = by_name["torchvision_awkward_batch0"]["onnx_omitted"]
    assert "empty batch" in reason and reason in printed
    assert cli.main(["vectors", "export", str(tmp_path / "w"), "--case", "onnx_with",
                     "--no-onnx"]) == 0
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["cases"][0]["onnx_omitted"] == "exported with --no-onnx"


def test_vectors_without_onnx_names_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)            # import onnx fails
    assert cli.main(["vectors", "export", str(tmp_path / "v"), "--case", "onnx_with"]) == 2
    err = capsys.readouterr().err
    assert "--no-onnx" in err and "pip install 'refdcn[onnx]'" in err


def test_bench_without_threadpoolctl_names_the_extra(monkeypatch):
    import numba
    from refdcn.benchmarks import cpu
    backends.available()                                       # numba's threading layer first
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    keep, info = cpu.limit_threads(numba.get_num_threads())    # (changes no thread count)
    keep.restore_original_limits()                             # refdcn's own threads only
    assert "pip install 'refdcn[bench]'" in info["blas"]
