"""Documentation contracts: public functions document their parameters and returns."""

import doctest
import inspect

import pytest

import refdcn
from refdcn import api, bilinear, geometry, driver, tolerances

PUBLIC = [api.deform_conv2d, api.deform_conv2d_backward]


@pytest.mark.parametrize("func", PUBLIC, ids=lambda f: f.__name__)
def test_public_functions_document_every_argument(func):
    doc = inspect.getdoc(func)
    assert "Parameters" in doc and "Returns" in doc
    params = doc.split("Parameters", 1)[1].split("Returns", 1)[0]
    for name in inspect.signature(func).parameters:
        assert name in params, f"{func.__name__}: argument {name!r} is not documented"


def test_offset_channel_order_is_documented():
    doc = inspect.getdoc(api.deform_conv2d)
    assert "2*k" in doc and "dy" in doc and "k = (g*kh + i)*kw + j" in doc


@pytest.mark.parametrize("module", [api, geometry, driver, tolerances, bilinear],
                         ids=lambda m: m.__name__)
def test_doctests(module):
    failures, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_every_shared_bilinear_function_is_documented():
    for name, obj in vars(bilinear).items():
        if inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_readme_python_examples_run():
    """Every ```python block of the README runs as written (in order, like a reader would)."""
    import importlib.util
    import pathlib
    import re
    text = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        if "torch" in block and importlib.util.find_spec("torch") is None:
            continue                                   # the torch extra is not installed
        exec(compile(block, "README.md", "exec"), {})


def test_documentation_site_builds_without_warnings(tmp_path):
    """Sphinx with warnings as errors: API reference from the docstrings, the guides, the
    notebooks with their saved outputs, the conformance and speed tables (docs/conf.py)."""
    import pathlib
    import subprocess
    import sys
    pytest.importorskip("sphinx", reason="the docs extra is not installed")
    pytest.importorskip("myst_nb", reason="the docs extra is not installed")
    pytest.importorskip("numpydoc", reason="the docs extra is not installed")
    docs = pathlib.Path(__file__).resolve().parent.parent / "docs"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-b",
                           "html", str(docs), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("index.html", "api.html", "tables.html", "guides/mmcv.html",
                 "notebooks/06_verifying_an_implementation.html"):
        assert (tmp_path / page).stat().st_size > 1000, page
    api = (tmp_path / "api.html").read_text()
    assert "deform_conv2d_backward" in api and "convention" in api and "DeformConv2dPack" in api
    notebook = (tmp_path / "notebooks" / "01_bilinear_interpolation.html").read_text()
    assert "<img" in notebook                                   # saved figures rendered
