"""Test configuration shared by the whole suite.

Without an NVIDIA GPU, the CUDA backend's tests run on Numba's CUDA simulator:
``NUMBA_ENABLE_CUDASIM`` must be set before numba is first imported, so it is
set here (unless the caller already chose).
"""

import os
import shutil

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not (
        os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi")):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

PEERS = ("torch", "torchvision", "onnx", "onnxruntime", "openvino")


def pytest_terminal_summary(terminalreporter):
    """Say once when the peer tests were skipped (the ``test-light`` install, see README)."""
    import importlib.util
    missing = [p for p in PEERS if importlib.util.find_spec(p) is None]
    if missing:
        terminalreporter.write_line(
            f"refdcn: the peer tests against {', '.join(missing)} were skipped (not installed: "
            f"the test-light install); pip install '.[test]' runs them", yellow=True)
