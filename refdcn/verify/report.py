"""Text and JSON renderings of a verification :class:`~refdcn.verify.runner.Report`."""

import json

from .measure import QUANTITIES
from .variants import get_variant

__all__ = ["format_text", "format_json"]

NAME_WIDTH = 28
CELL = 15


def _num(v):
    v = float(v)
    if v != v:
        return "nan"
    if v == float("inf"):
        return "inf"
    return f"{v:.1e}"


def _cell(measure):
    if measure is None:
        return "-".center(CELL)
    text = f"{_num(measure.abs_error)}/{_num(measure.rel_error)}"
    if not measure.ok:
        text += "!"
    return f"{text:<{CELL}}"


def _cause_title(key):
    if key == "batch_split":
        return "the result depends on how the batch is split"
    return get_variant(key).title


def format_text(report, verbose=False):
    """The human-readable report: header, one row per case, diagnoses, summary."""
    t = report.tolerance
    quantities = [q for q in QUANTITIES
                  if any(q in r.measures for r in report.results)] or ["output"]
    lines = [f"refdcn verify {report.implementation}: {report.description}",
             f"{len(report.results)} cases, {report.dtype}, "
             + (f"forward + gradients ({report.convention} offset-gradient convention)"
                if report.gradients else "forward only")
             + f"; pass: {t.describe()}"]
    lines += [f"note: {n}" for n in report.notes]
    bound_col = t.uses_bounds
    header = f"{'case':<{NAME_WIDTH}} {'result':<6} " + " ".join(
        f"{q:<{CELL}}" for q in quantities)
    if bound_col:
        header += " worst/bound"
    lines += ["", header.rstrip(),
              (f"{'':<{NAME_WIDTH}} {'':<6} " + " ".join(f"{'abs/rel':<{CELL}}"
                                                       for _ in quantities)).rstrip()]
    for r in report.results:
        row = f"{r.name:<{NAME_WIDTH}} {r.status.upper():<6} "
        if r.status == "missing":
            row += "(no output file)"
        elif r.status == "error" and not r.measures:
            row += r.error
        else:
            row += " ".join(_cell(r.measures.get(q)) for q in quantities)
            if bound_col:
                worst = max((m.ratio for m in r.measures.values() if m.ratio is not None),
                            default=0.0)
                row += f" {_num(worst)}"
        lines.append(row.rstrip())
    failed = [r for r in report.results if r.status in ("fail", "error")]
    if failed:
        lines += ["", "(! = outside tolerance)", ""]
    for r in failed:
        lines.append(f"{r.status.upper()} {r.name}: {r.catches}")
        if r.error:
            lines.append(f"  error: {r.error}")
        if verbose or r.status == "fail":
            lines.append(f"  case: {r.describe}")
        if r.diagnosis is not None:
            lines += r.diagnosis.lines()
    passed = report.count("pass")
    summary = f"{passed}/{len(report.results) - report.count('missing')} cases pass"
    extra = [f"{report.count(s)} {s}" for s in ("fail", "error", "missing") if report.count(s)]
    if extra:
        summary += " (" + ", ".join(extra) + ")"
    lines += ["", summary + "."]
    causes = report.causes()
    diagnosed = [r for r in report.results if r.status == "fail"]
    for key, names in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        lines.append(f"diagnosis: {_cause_title(key)}: explains {len(names)} of "
                     f"{len(diagnosed)} failing cases ({shown})")
    return "\n".join(lines)


def format_json(report):
    """The machine-readable report (a JSON string)."""
    return json.dumps(report.to_json(), indent=2)
