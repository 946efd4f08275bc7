"""Static checks of the teaching notebooks (CI executes them with ``pytest --nbmake notebooks/``).

These tests do not run the notebooks; they check that each one is committed the
way the project promises: numbered in reading order, opening with what it
teaches and what it assumes, with the small/full parameters cell, executed
(outputs and figures stored, no error output), and free of machine-specific paths.
"""

import json
import pathlib
import re

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_bilinear_interpolation", "02_forward", "03_modulation", "04_manual_backward",
            "05_gradient_checks", "06_verifying_an_implementation", "07_speed"]
MACHINE_PATHS = re.compile(r"(/work/|/tmp/|/home/|/root/|/Users/|[A-Z]:\\\\)")


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_the_notebooks_are_numbered_in_reading_order():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_opens_with_what_it_teaches_and_assumes(path):
    first = _load(path)["cells"][0]
    assert first["cell_type"] == "markdown"
    text = _source(first)
    assert "What this notebook teaches" in text and "What it assumes" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_the_small_full_parameters_cell(path):
    code = [_source(c) for c in _load(path)["cells"] if c["cell_type"] == "code"]
    assert any('SMALL = os.environ.get("REFDCN_NOTEBOOK_SIZE", "small") == "small"' in c
               for c in code[:2]), "the parameters cell must be one of the first two code cells"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_executed_without_errors(path):
    cells = [c for c in _load(path)["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in cells if _source(c).strip()), \
        "every code cell must have been executed"
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o for o in outputs if o.get("name") == "stderr" and "Traceback" in o.get("text", "")]
    if path.stem not in ("06_verifying_an_implementation",):      # 06 prints reports, no figures
        assert any("image/png" in o.get("data", {}) for o in outputs), "figures must be stored"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_machine_specific_paths(path):
    for cell in _load(path)["cells"]:
        assert not MACHINE_PATHS.search(_source(cell)), _source(cell)[:200]
