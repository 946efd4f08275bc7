"""Execute a notebook and compare the text it prints with its saved outputs.

Used by ``tests/test_notebooks.py`` (and runnable by hand:
``python tests/notebook_outputs.py notebooks/01_*.ipynb``).  The text parts of
the outputs (streams, and the ``text/plain`` of results) must be what the cell
prints now, except the parts that depend on the machine rather than on the
notebook: versions, the Numba threading layer, CPU counts and load, paths, and
in timing cells (marked by the words in :data:`TIMING`, or printing milliseconds) the
measured numbers.
"""

import copy
import os
import re
import sys

VERSION = re.compile(r"((?:Python|NumPy|numpy|Numba|numba|torch|torchvision|onnx|onnxruntime|"
                     r"Cython|opset|version)\s*)\d+(?:\.\d+)*\S*")
CPUS = re.compile(r"\d+ (logical CPUs|cores|Numba threads|threads)")
LOAD = re.compile(r"load average[^\n]*")
PATH = re.compile(r"(?<![\w|)])/(?:[\w.-]+/)+[\w.-]*")
#: Errors at the level of float64 rounding (< 1e-12) depend on the BLAS and thread count.
ROUNDING = re.compile(r"\b\d(?:\.\d+)?e-(?:1[3-9]|[2-9]\d|3\d\d)\b")
#: A cell whose source mentions one of these measures time: its numbers are masked.
TIMING = ("perf_counter", "timeit", "time.time(")
MILLISECONDS = re.compile(r"\d ms\b")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def output_text(cell):
    """The text parts of a code cell's outputs, joined."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append("".join(out.get("text", "")))
        elif out.get("output_type") in ("execute_result", "display_data"):
            text = out.get("data", {}).get("text/plain")
            if text is not None and "image/png" not in out.get("data", {}):
                parts.append("".join(text))
    return "".join(parts)


def normalise(text, timing):
    # whether this machine has a (real or simulated) GPU for the cuda backend
    text = "\n".join(line for line in text.split("\n")
                     if not ("cuda" in line and "available" in line))
    text = text.replace(", 'cuda'", "")
    text = VERSION.sub(lambda m: m.group(1) + "<version>", text)
    text = re.sub(r"\b(?:omp|tbb|workqueue) threading layer", "<layer> threading layer", text)
    text = CPUS.sub(lambda m: "<n> " + m.group(1), text)
    text = LOAD.sub("load average <load>", text)
    text = PATH.sub("<path>", text)
    text = ROUNDING.sub("<rounding>", text)
    if timing or MILLISECONDS.search(text):
        text = re.sub(r"[ \t]+", " ", NUMBER.sub("<n>", text))
    return text


def stale_cells(path, timeout=900):
    """``[(cell index, saved text, current text)]`` for every code cell whose text changed."""
    import nbformat
    from nbclient import NotebookClient
    saved = nbformat.read(path, as_version=4)
    fresh = copy.deepcopy(saved)
    # the kernel's inline matplotlib backend, and no CUDA simulator forced by the test suite's
    # conftest: the environment the outputs were saved in
    saved_env = {k: os.environ.pop(k) for k in ("MPLBACKEND", "NUMBA_ENABLE_CUDASIM")
                 if k in os.environ}
    try:
        NotebookClient(fresh, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}
                       ).execute()
    finally:
        os.environ.update(saved_env)
    stale = []
    for i, (old, new) in enumerate(zip(saved.cells, fresh.cells)):
        if old.cell_type != "code":
            continue
        timing = any(word in old.source for word in TIMING)
        a, b = normalise(output_text(old), timing), normalise(output_text(new), timing)
        if a != b:
            stale.append((i, a, b))
    return stale


if __name__ == "__main__":
    for path in sys.argv[1:]:
        for i, a, b in stale_cells(path):
            print(f"{path} cell {i}:\n--- saved\n{a}\n--- now\n{b}\n")
