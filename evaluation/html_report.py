"""report/index.html: every report section whose file exists (`report.SECTIONS`, in order) and
explain.py's `explanations/` folder, on one static page that needs nothing from the internet."""

from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Callable

from contracts import explanation_folder
from contracts.atomic import write_text
from contracts.output_names import PROB, finding_prob
from evaluation import agreement, findings, localization, statistics, triage, triage_report
from evaluation import report as report_lib

INDEX_FILE = "index.html"
EXPLANATIONS_DIR = explanation_folder.IN_REPORT  # explain.py --output_dir=<report>/explanations

_STYLE = """body{font-family:sans-serif;margin:2em auto;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child,td:first-child{text-align:left}
img{max-width:32em;margin:.3em}figure{display:inline-block;margin:.3em}
figcaption{font-size:.8em;max-width:20em}.note{color:#555;font-size:.9em}"""


def _load(report_dir: str, name: str) -> Any:
    path = os.path.join(report_dir, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _interval(value: Any) -> str:
    return f"[{value[0]:.3f}, {value[1]:.3f}]" if value else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_section(metrics: dict[str, Any]) -> str:
    names = list(metrics)
    rows = [[html.escape(label)] + [_interval(metrics[n].get(key)) if key.endswith("_ci95")
                                    else html.escape(report_lib.cell(metrics[n].get(key))) for n in names]
            for key, label in report_lib.TABLE_ROWS]
    return "<h2>Metrics</h2>" + _table(["metric"] + names, rows) + _findings_section(metrics)


def _findings_section(metrics: dict[str, Any]) -> str:
    """Each entry's per-finding table beside the published AUROCs ("" when no entry has finding labels)."""
    tables = {name: entry[findings.KEY] for name, entry in metrics.items() if entry.get(findings.KEY)}
    if not tables:
        return ""
    parts = ["<h2>Per finding</h2><p class=note>AUROC per NIH finding on the records whose findings are "
             f"known, with its 95% interval by {statistics.UNIT}; a finding with fewer than "
             f"{findings.MIN_POSITIVES} positives or negatives shows its counts only. The last columns are "
             f"published AUROCs on {findings.SCALE_ONLY}.</p>"]
    for name, table in tables.items():
        rows = findings.display_rows(table)
        parts.append(f"<h3>{html.escape(name)}</h3>" + (
            _table(findings.header(), [[html.escape(c) for c in row] for row in rows]) if rows
            else f"<p>{html.escape(table['absent'])}.</p>"))
    sources = "".join(f"<li>{html.escape(f'{s.short}: {s.citation}')}</li>" for s in findings.PUBLISHED)
    return "".join(parts) + f"<p class=note>Published AUROCs on {findings.SCALE_ONLY}:</p><ul>{sources}</ul>"


def _gain_section(gain: dict[str, Any]) -> str:
    return f"<h2>Ensemble against its best member</h2><p>{html.escape(report_lib.gain_line(gain))}.</p>"


def _calibration_section(metrics: dict[str, Any]) -> str:
    keys = ("temperature", "ece_uncalibrated", "ece", "brier_uncalibrated", "brier")
    rows = [[html.escape(name)] + [_number(m.get(key)) for key in keys] for name, m in metrics.items()]
    return ("<h2>Calibration</h2><p class=note>Expected calibration error over equal-width bins of "
            "P(abnormal) and Brier score, before and after each model's temperature (fitted on validation; "
            "n/a: none applied).</p>"
            + _table(["model", "temperature", "ECE before", "ECE", "Brier before", "Brier"], rows))


def _operating_points_section(points: dict[str, Any]) -> str:
    rows = []
    for name, entries in points.items():
        for row in entries:
            if row.get("threshold") is None:
                rows.append([html.escape(name), html.escape(row["target"]), "n/a", "", ""])
                continue
            rows.append([html.escape(name), html.escape(row["target"]), _number(row["threshold"], 4),
                         f"{_number(row['test_sensitivity'])} {_interval(row['test_sensitivity_ci95'])}",
                         f"{_number(row['test_specificity'])} {_interval(row['test_specificity_ci95'])}"])
    return ("<h2>Operating points</h2><p class=note>Thresholds chosen on validation, then measured on these "
            "records (95% intervals from a bootstrap that resamples patients).</p>"
            + _table(["model", "chosen on validation for", "threshold", "sensitivity", "specificity"], rows))


def _triage_section(metrics: dict[str, Any]) -> str:
    """The triage table of the entries that have one, its notes, then (by _section) the curve."""
    rows = triage_report.display_rows(metrics)
    if not rows:
        return ""
    notes = "".join(f"<p class=note>{html.escape(line)}</p>" for line in triage_report.notes(metrics))
    return ("<h2>Triage</h2>" + _table(triage_report.header(metrics), [[html.escape(c) for c in row]
                                                                     for row in rows])
            + notes + f"<p>{html.escape(triage.EXCHANGEABLE)}</p>")


def _subgroups_section(tables: dict[str, Any]) -> str:
    parts = ["<h2>Subgroups</h2>"]
    for name, rows in tables.items():
        parts.append(f"<h3>{html.escape(name)}</h3>" + _table(
            ["attribute", "group", "n", "patients", "prevalence", "AUROC", "95% CI (by patient)"],
            [[html.escape(r["attribute"]), html.escape(r["group"]), str(r["n"]),
              str(r.get("patients", "n/a")), _number(r["prevalence"]), _number(r["auroc"]),
              _interval(r["auroc_ci95"])] for r in rows]))
    return "".join(parts)


def _other_labels_section(other: dict[str, Any]) -> str:
    text = html.escape(agreement.format_other_labels(other)).replace("\n", "<br>")
    return f"<h2>Against another label set</h2><p>{text}</p>"


# A JSON section's renderer gets its file's content; a PNG section shows as an image, after its
# renderer's table of metrics.json when it has one.
_RENDER: dict[str, Callable[[Any], str]] = {
    "metrics": _metrics_section,
    "calibration": _calibration_section,
    "ensemble gain": _gain_section,
    "operating points": _operating_points_section,
    "triage": _triage_section,
    "subgroups": _subgroups_section,
    "other labels": _other_labels_section,
}


def _section(report_dir: str, section: report_lib.Section) -> str:
    if section.file.endswith(".png"):
        metrics = _load(report_dir, report_lib.METRICS_FILE)
        table = _RENDER[section.name](metrics) if metrics and section.name in _RENDER else ""
        return table + f'<img src="{section.file}" alt="{html.escape(section.name)}">'
    content = _load(report_dir, section.file)
    return _RENDER[section.name](content) if content else ""


_LOCALIZATION_HEADER = ["finding", "images", "boxes", "pointing game", "baseline", "energy in boxes",
                        "baseline", "box area"]


def _localization_rows(report: dict[str, Any]) -> list[list[str]]:
    named = [("all findings", report["overall"])] + sorted(report.get("per_finding", {}).items())
    return _rows(named)


def _rows(named: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    return [[html.escape(name), str(row["images"]), str(row["boxes"])]
            + [_number(row[column]) for column in localization.MEANS] for name, row in named]


def _finding_maps_table(own: dict[str, Any]) -> str:
    return ("<h3>Each finding's own map against its boxes</h3><p class=note>Grad-CAM of each finding's "
            "logit, scored against the boxes of that finding only (the table above scores the "
            f"abnormal-vs-normal map against them); {own['empty_maps']} empty maps.</p>"
            + _table(_LOCALIZATION_HEADER, _rows(sorted(own["per_finding"].items()))))


def _caption(entry: dict[str, Any], finding: str | None) -> str:
    what = {1: "abnormal", 0: "normal"} if finding is None else {1: "present", 0: "absent"}
    label = what.get(entry.get("label"), "unknown")
    p = entry[PROB] if finding is None else entry[finding_prob(finding)]
    return (f"{html.escape(entry['group'])}: {html.escape(entry['image_id'])}, "
            f"P({html.escape(finding or 'abnormal')}) {p:.3f}, label {label}")


def _explanations_section(report_dir: str) -> str:
    folder = os.path.join(report_dir, EXPLANATIONS_DIR)
    index = explanation_folder.load_index(folder)
    parts = ["<h2>Where the model looks</h2><p class=note>Grad-CAM on the last convolutional feature map "
             "(for an ensemble, the weighted mean of its members' maps); boxes drawn where the image has "
             "them.</p>"]
    located = index.get("localization")
    if located and located.get("scored"):
        parts.append("<h3>Localization against the expert boxes</h3><p class=note>Pointing game: the map's "
                     "maximum falls inside a box. Energy: the map's share inside the boxes. Each beside a "
                     "centred Gaussian map, the 'look at the middle' baseline.</p>" + _table(
                         _LOCALIZATION_HEADER, _localization_rows(located)))
        if located.get(localization.FINDING_MAPS):
            parts.append(_finding_maps_table(located[localization.FINDING_MAPS]))
    elif located:
        parts.append(f"<p>Localization not scored: {html.escape(str(located.get('reason')))}</p>")
    figures = []
    for entry in index["images"]:
        src = os.path.relpath(os.path.join(folder, entry["overlay"]), report_dir)
        figures.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(entry["image_id"])}" '
                       f'style="max-width:14em"><figcaption>{_caption(entry, index.get("finding"))}'
                       "</figcaption></figure>")
    mapped = f" of {html.escape(index['finding'])}" if index.get("finding") else ""
    return "".join(parts) + f"<h3>Gallery{mapped}</h3>" + "".join(figures)


def write_index(report_dir: str) -> str:
    """Writes report_dir/INDEX_FILE from the files present there; returns its path."""
    title = f"Chest X-ray classifier report: {os.path.basename(os.path.abspath(report_dir))}"
    parts = [f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [_section(report_dir, section) for section in report_lib.SECTIONS
              if os.path.isfile(os.path.join(report_dir, section.file))]
    if os.path.isfile(os.path.join(report_dir, EXPLANATIONS_DIR, explanation_folder.INDEX)):
        parts.append(_explanations_section(report_dir))
    parts.append("</body></html>")
    path = os.path.join(report_dir, INDEX_FILE)
    write_text(path, "\n".join(parts))
    return path
