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
