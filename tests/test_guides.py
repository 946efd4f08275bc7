"""The "Coming from ..." guides (docs/guides/): every API has its table and a runnable example,
and every example runs (against the real library where it is installed)."""

import importlib.util
import pathlib
import re

import pytest

GUIDES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides"
EXPECTED = ["torchvision", "mmcv", "paddle", "onnx", "openvino", "dcnv3"]
#: The peers a guide's example runs against when they are installed (the test extra has them).
NEEDS = {"torchvision": ["torch", "torchvision"], "onnx": ["onnx", "onnxruntime"]}


def _blocks(name):
    return re.findall(r"```python\n(.*?)```", (GUIDES / f"{name}.md").read_text(), flags=re.S)


def test_one_guide_per_api():
    assert sorted(p.stem for p in GUIDES.glob("*.md") if p.stem != "index") == sorted(EXPECTED)
    index = (GUIDES / "index.md").read_text()
    assert all(name in index for name in EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_guide_has_a_mapping_table_and_an_example(name):
    text = (GUIDES / f"{name}.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) >= 8, "a table mapping every argument"
    assert "refdcn" in rows[0]
    assert len(_blocks(name)) == 1


@pytest.mark.parametrize("name", EXPECTED)
def test_guide_example_runs(name):
    missing = [m for m in NEEDS.get(name, []) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (the test extra has them)")
    exec(compile(_blocks(name)[0], f"docs/guides/{name}.md", "exec"), {})
