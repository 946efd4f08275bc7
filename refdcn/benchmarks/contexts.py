"""``refdcn bench --beside``: refdcn's speed alone and beside other libraries, in one run.

A deformable convolution is rarely the only thing in its process: torch or
OpenVINO is loaded next to it, someone has set Numba's thread count first, or
another job holds a core.  Each of those *contexts* can change how the thread
pools of a process (Numba's, OpenMP's, the BLAS's) share the cores, so each
is measured in a fresh Python process, one after the other, with the same
shapes, backends, threads and repeats (:mod:`refdcn.benchmarks.cpu`), and the
results are printed side by side with the ratio to the process that loaded
refdcn alone.

Contexts (:data:`CONTEXTS`):

``alone``
    Nothing but refdcn (always measured: the reference column).
``torch``
    ``import torch``, ``torch.set_num_threads(threads)`` and one small matrix
    product and convolution (which start torch's OpenMP threads) before refdcn
    is imported.  torch ships a GNU OpenMP runtime that a later OpenMP user
    shares.
``openvino``
    OpenVINO's CPU plugin compiled and run once (a one-layer model) before
    refdcn is imported; skipped when OpenVINO is not installed.
``numba-threads``
    ``numba.set_num_threads(threads)`` before refdcn is imported: that call
    starts Numba's threading layer, so this is the context in which a
    library that picks Numba's layer lazily loses the choice.
``busy-core``
    refdcn alone, while a second process spins on one CPU of this process's
    affinity (pinned with ``os.sched_setaffinity``): a machine where one core
    is taken by other work.
"""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict

CONTEXTS = ("alone", "torch", "openvino", "numba-threads", "busy-core")

#: The code a ``busy-core`` process runs: pin itself to one CPU and spin.
BUSY_LOOP = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def context_available(name):
    """``None`` if context ``name`` can be measured here, else the reason it cannot."""
    import importlib.util
    if name == "torch" and importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if name == "openvino" and importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install openvino)"
    if name == "busy-core":
        if not hasattr(os, "sched_getaffinity"):
            return "needs os.sched_setaffinity (Linux)"
        if len(os.sched_getaffinity(0)) < 2:
            return "this process may use one CPU only: a busy core would leave none"
    return None


def enter_context(name, threads):
    """Set up context ``name`` in this process, before refdcn's backends are imported."""
    if name == "torch":
        import torch
        import torch.nn.functional
        torch.set_num_threads(threads)
        a = torch.randn(256, 256)
        (a @ a).sum().item()
        torch.nn.functional.conv2d(torch.randn(2, 16, 32, 32), torch.randn(16, 16, 3, 3)).sum()
    elif name == "openvino":
        import numpy as np
        import openvino as ov
        import openvino.opset8 as ops       # openvino.runtime was removed in 2026
        x = ops.parameter([1, 16, 32, 32], np.float32)
        w = ops.constant(np.ones((16, 16, 3, 3), np.float32))
        model = ov.Model([ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])], [x])
        compiled = ov.Core().compile_model(model, "CPU",
                                           {"INFERENCE_NUM_THREADS": str(threads)})
        compiled(np.ones((1, 16, 32, 32), np.float32))
        globals()["_openvino_model"] = compiled        # keep its threads alive
    elif name == "numba-threads":
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def child_main(argv):
    """Entry point of one measuring process: ``CONTEXT SETTINGS_JSON OUT_JSON``."""
    name, settings_path, out_path = argv
    with open(settings_path) as f:
        settings = json.load(f)
    enter_context(name, settings["threads"])
    from . import cpu
    from .. import backends
    for backend in settings["backends"]:        # as `refdcn bench` does before measuring
        backends.get(backend)
    s = cpu.Settings(**{k: v for k, v in settings.items() if k != "thread_info"})
    s.shapes = [tuple(shape) for shape in s.shapes]
    with open(os.devnull, "w") as quiet:
        rows = cpu.run_cpu_benchmark(s, out=quiet)
    layer = cpu._threading_layer()
    with open(out_path, "w") as f:
        json.dump(dict(rows=[asdict(r) for r in rows], threading_layer=layer,
                       thread_info=s.thread_info), f)


def _measure(name, settings, tmp):
    """Run one context in a child process; returns its record (or raises RuntimeError)."""
    settings_path = os.path.join(tmp, "settings.json")
    out_path = os.path.join(tmp, f"{name}.json")
    with open(settings_path, "w") as f:
        json.dump(asdict(settings), f)
    busy = None
    if name == "busy-core":
        cpu_id = max(os.sched_getaffinity(0))
        busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpu_id)])
    try:
        done = subprocess.run([sys.executable, "-m", "refdcn.benchmarks.contexts", name,
                               settings_path, out_path], capture_output=True, text=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"the {name!r} process failed: {last}")
    with open(out_path) as f:
        return json.load(f)


def _ratio(value, alone):
    return None if value is None or alone is None or alone == 0 else value / alone


def format_contexts(records):
    """Forward and forward+backward times per context, with the ratio to ``alone``."""
    from .cpu import format_shape
    names = list(records)
    lines = []
    header = f"{'shape (B,Cin,Cout,HxW,k)':<24} {'backend':<12}" + "".join(
        f" {name:>18}" for name in names)
    alone = {(tuple(r["shape"]), r["backend"]): r for r in records["alone"]["rows"]}
    for key, title in (("forward_ms", "forward ms (x alone)"),
                       ("forward_backward_ms", "forward+backward ms (x alone)")):
        lines += [title, header]
        for (shape, backend), base in alone.items():
            cells = []
            for name in names:
                row = next((r for r in records[name]["rows"]
                            if tuple(r["shape"]) == shape and r["backend"] == backend), None)
                value = None if row is None else row[key]
                ratio = _ratio(value, base[key])
                cells.append(f"{'-':>18}" if value is None else
                             f"{value:>10.2f} ({ratio:4.1f}x)")
            lines.append(f"{format_shape(shape):<24} {backend:<12} " + " ".join(cells))
    layers = ", ".join(f"{name}: {records[name].get('threading_layer')}" for name in names)
    lines.append(f"numba threading layer per context: {layers}")
    return "\n".join(lines)


def run_contexts(settings, beside, json_path=None, out=None):
    """Measure ``alone`` and each context of ``beside``; print the table; returns the records."""
    from tqdm import tqdm
    from .cpu import machine
    out = sys.stdout if out is None else out
    wanted = ["alone"] + [name for name in beside if name != "alone"]
    records, skipped = {}, {}
    settings.baselines = False
    with tempfile.TemporaryDirectory(prefix="refdcn-bench-") as tmp:
        for name in tqdm(wanted, desc="refdcn bench --beside", unit="context", file=sys.stderr,
                         disable=None, leave=False):
            reason = context_available(name)
            if reason is None:
                try:
                    records[name] = _measure(name, settings, tmp)
                    continue
                except RuntimeError as exc:
                    reason = str(exc)
            skipped[name] = reason
    if "alone" not in records:
        raise RuntimeError(skipped["alone"])
    print(f"refdcn bench --beside: {machine()}", file=out)
    print(f"{settings.dtype}, {'DCNv2' if settings.modulated else 'DCNv1'}, threads "
          f"{settings.threads}, median of {settings.repeats} calls after {settings.warmup} "
          f"warm-up(s); each context in a fresh process, one after the other", file=out)
    print(format_contexts(records), file=out)
    for name, reason in skipped.items():
        print(f"note: context {name!r} not measured: {reason}", file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(machine=machine(), settings=asdict(settings), contexts=records,
                           skipped=skipped), f, indent=1)
    return records


if __name__ == "__main__":
    child_main(sys.argv[1:])
