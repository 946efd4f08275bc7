"""Sphinx configuration of refdcn's documentation site.

Build (warnings are errors, as in CI through tests/test_docs.py)::

    pip install '.[docs]' && sphinx-build -W -b html docs docs/_build/html

The notebooks are rendered with the outputs saved in them (not re-executed);
the conformance table is generated from :mod:`refdcn.conformance`.
"""

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import refdcn  # noqa: E402
from refdcn import conformance  # noqa: E402

project = "refdcn"
author = "the refdcn developers"
release = version = refdcn.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "numpydoc", "myst_nb"]
exclude_patterns = ["_build", "experiment"]
nb_execution_mode = "off"                    # render the saved outputs
myst_enable_extensions = ["dollarmath"]
numpydoc_show_class_members = False
numpydoc_validation_checks = set()
autodoc_member_order = "bysource"
html_theme = "alabaster"
html_title = f"refdcn {release}"
suppress_warnings = ["myst.header"]           # notebooks start with a level-1 title per page


def _copy_notebooks():
    target = os.path.join(HERE, "notebooks")
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(os.path.join(ROOT, "notebooks"))):
        if name.endswith(".ipynb"):
            shutil.copyfile(os.path.join(ROOT, "notebooks", name), os.path.join(target, name))


def _write_conformance_table():
    target = os.path.join(HERE, "_generated")
    os.makedirs(target, exist_ok=True)
    lines = ["| case | what it catches | in the ONNX layout |", "|---|---|---|"]
    for c in conformance.CASES:
        catches = c.catches.replace("|", "\\|")
        lines.append(f"| `{c.name}` | {catches} | {'yes' if c.onnx else 'no: ' + c.onnx_omitted} |")
    with open(os.path.join(target, "conformance_cases.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


_copy_notebooks()
_write_conformance_table()
