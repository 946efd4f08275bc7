"""The teaching notebooks: executed, current, and committed the way the project promises.

:func:`test_saved_outputs_are_what_the_cells_print_now` executes every notebook
(small sizes) and compares what its cells print with the saved outputs; the
other tests are static and check that each notebook is committed the way the
project promises: numbered in reading order, opening with what it
teaches and what it assumes, with the small/full parameters cell, executed
(outputs and figures stored, no error output), and free of machine-specific paths.
"""

import json
import pathlib
import re

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_bilinear_interpolation", "02_forward", "03_modulation", "04_manual_backward",
            "05_gradient_checks", "06_verifying_an_implementation", "07_speed",
            "08_dcnv2_to_dcnv4"]
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


# --- prose where it belongs, outputs that are current, figures that match the convention ---------

#: A comment line that is a markdown heading: "# ## 6.5 Title", "# # Title", "# 6.5 Title".
HEADING_COMMENT = re.compile(r"^#\s*(#{1,6}\s+\S|\d+(\.\d+)+\s+[A-Z])")


def _comment_lines(source):
    return [line.strip() for line in source.splitlines()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_markdown_written_as_comments_in_code_cells(path):
    """Headings and prose paragraphs go in markdown cells, where they render (a heading left as
    a comment at the end of a code cell made 06 jump from 6.4 to 6.6)."""
    for index, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = _comment_lines(_source(cell))
        headings = [line for line in lines if HEADING_COMMENT.match(line)]
        assert not headings, f"cell {index}: a heading written as a comment: {headings[0]!r}"
        # a paragraph: 3+ consecutive comment lines closing the cell, nothing after them
        tail = 0
        for line in reversed(lines):
            if not line:
                continue
            if not line.startswith("#"):
                break
            tail += 1
        assert tail < 3, f"cell {index}: ends with a {tail}-line comment paragraph (markdown?)"


#: ``extent=(g[0], g[-1], ...)``: the samples of grid ``g`` drawn as cells that *start* at their
#: coordinates, i.e. shifted by half a sample; the notebooks put pixel centres (and samples) at
#: their coordinates, so an extent must reach half a spacing beyond the first and last sample.
UNCENTRED_EXTENT = re.compile(r"extent=\(\s*(\w+)\[0\]\s*,\s*\1\[-1\]")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figure_extents_follow_the_coordinate_convention(path):
    for index, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] == "code":
            match = UNCENTRED_EXTENT.search(_source(cell))
            assert not match, (f"cell {index}: {match.group(0)} draws samples half a spacing "
                               f"off their coordinates (pixel centres are at integers)")


def test_the_static_checks_can_fail():
    """The two patterns above catch the faults they were written for."""
    assert HEADING_COMMENT.match("# ## 6.5 Gradients, and the convention question")
    assert HEADING_COMMENT.match("# 6.5 Gradients")
    assert not HEADING_COMMENT.match("# 2 taps, 3 channels")
    assert UNCENTRED_EXTENT.search("ax.imshow(img, extent=(gx[0], gx[-1], gy[-1], gy[0]))")
    assert not UNCENTRED_EXTENT.search("extent=(gx[0] - sx / 2, gx[-1] + sx / 2, 1, 0)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_saved_outputs_are_what_the_cells_print_now(path):
    """Executes the notebook (small sizes) and compares the text of every cell's outputs with
    the saved one, except what depends on the machine (tests/notebook_outputs.py)."""
    pytest.importorskip("nbclient")
    import notebook_outputs
    stale = notebook_outputs.stale_cells(str(path))
    assert not stale, "stale saved output (re-run: jupyter nbconvert --to notebook --execute " \
        f"--inplace {path.name}):\n" + "\n".join(f"cell {i}:\n--- saved\n{a}\n--- now\n{b}"
                                                  for i, a, b in stale[:2])
