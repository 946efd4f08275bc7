"""Text and JSON renderings of a verification :class:`~refdcn.verify.runner.Report`."""

import json

from .measure import QUANTITIES
from .variants import get_variant

__all__ = ["format_text", "format_json", "cause_title", "CAUSE_TITLES"]

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


#: Titles of the causes that are not variants (:mod:`refdcn.verify.variants`).
CAUSE_TITLES = {
    "not_repeatable": "an identical call gave a different result (uninitialised or reused "
                      "buffer, state between calls, or a race)",
    "computes_in_float32": "it computes in float32 when given float64 (every result is a "
                           "float32 value within the float32 tier)",
    "batch_split": "the result depends on how the batch is split",
}


def cause_title(key):
    """One line saying what the cause ``key`` (a key of ``summary.causes``) means."""
    from .runner import ERROR_CAUSES
    if key in CAUSE_TITLES:
        return CAUSE_TITLES[key]
    if key in ERROR_CAUSES:
        return ERROR_CAUSES[key]
    return get_variant(key).title


def format_text(report, verbose=False):
    """The human-readable report: summary and causes, one row per case, then one block per
    distinct diagnosis (the cases sharing it named once; ``verbose``: every case in full)."""
    t = report.tolerance
    lines = [f"refdcn verify {report.implementation}: {report.description}",
             f"{len(report.results)} cases, {report.dtype}, "
             + (f"forward + gradients ({report.convention} offset-gradient convention)"
                if report.gradients else "forward only")
             + f"; pass: {t.describe()}"]
    # summary and causes first
    lines += ["", _summary(report)]
    causes = report.causes()
    for key, names in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {key}: {cause_title(key)} ({len(names)}: {_names(names)})")
    if report.common is not None:
        lines.append(f"  unexplained failures have this in common: {report.common.text()}")
    missing = [r.name for r in report.results if r.status == "missing"]
    if missing:
        lines.append(f"  missing outputs{' (allowed)' if report.allow_missing else ''}: "
                     f"{_names(missing, 100)}")
    lines += [f"note: {n}" for n in report.notes]
    lines += [""] + _table(report)
    # one block per distinct diagnosis
    failed = [r for r in report.results if r.status in ("fail", "error")]
    groups = {}
    for r in failed:
        why = tuple(r.diagnosis.why_lines()) if r.diagnosis is not None else ()
        groups.setdefault((r.status, r.error, why), []).append(r)
    if failed:
        lines += ["", "(! = outside tolerance)"]
    for (status, error, why), members in groups.items():
        lines += ["", f"{status.upper()} {_names([r.name for r in members], 100)}"
                      + (f": {members[0].catches}" if len(members) == 1 else
                         f" ({len(members)} cases)")]
        if error:
            lines.append(f"  error: {error}")
        shown = members if verbose else members[:1]
        for r in shown:
            if verbose or len(members) > 1:
                lines.append(f"  [{r.name}] case: {r.describe}" if verbose else
                             f"  first case shown: {r.name}")
            elif status == "fail":
                lines.append(f"  case: {r.describe}")
            if r.diagnosis is not None:
                lines += r.diagnosis.where_lines()
        lines += list(why)
        if len(members) > 1 and not verbose:
            lines.append(f"  (--verbose: where each of the {len(members)} cases is wrong)")
    return "\n".join(lines)


def _names(names, limit=6):
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)"
                                       if len(names) > limit else "")


def _summary(report):
    n = len(report.results)
    text = f"{report.count('pass')}/{n} cases pass"
    extra = [f"{report.count(s)} {s}" for s in ("fail", "error", "unsupported", "missing")
             if report.count(s)]
    if extra:
        text += " (" + ", ".join(extra) + ")"
    return text + (": PASS" if report.exit_code() == 0 else ": FAIL")


def _table(report):
    t = report.tolerance
    quantities = [q for q in QUANTITIES
                  if any(q in r.measures for r in report.results)] or ["output"]
    header = f"{'case':<{NAME_WIDTH}} {'result':<6} " + " ".join(
        f"{q:<{CELL}}" for q in quantities)
    if t.uses_bounds:
        header += " worst/bound"
    lines = [header.rstrip(),
             (f"{'':<{NAME_WIDTH}} {'':<6} " + " ".join(f"{'abs/rel':<{CELL}}"
                                                      for _ in quantities)).rstrip()]
    for r in report.results:
        row = f"{r.name:<{NAME_WIDTH}} {r.status.upper():<6} "
        if r.status == "missing":
            row += "(no output file)"
        elif r.status == "unsupported":
            row = f"{r.name:<{NAME_WIDTH}} {'UNSUP.':<6} {r.error}"
        elif r.status == "error" and not r.measures:
            row += r.error
        else:
            row += " ".join(_cell(r.measures.get(q)) for q in quantities)
            if t.uses_bounds:
                worst = max((m.ratio for m in r.measures.values() if m.ratio is not None),
                            default=0.0)
                row += f" {_num(worst)}"
        lines.append(row.rstrip())
    return lines


def format_json(report):
    """The machine-readable report (a JSON string)."""
    return json.dumps(report.to_json(), indent=2)
