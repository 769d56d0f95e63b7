"""The report's sections beyond the metrics table: calibration, subgroups and operating points.

Each goes to its own JSON beside metrics.json (and the reliability diagram to a PNG), so that the
HTML page (evaluation/html_report.py) and other tools read numbers, not text.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from contracts.atomic import json_ready, write_json
from evaluation import calibration_report, operating_points, subgroups

if TYPE_CHECKING:
    from evaluation.report import Scores


def write_sections(report_dir: str, scores: Sequence["Scores"], bootstrap: int) -> dict[str, str]:
    """Writes the sections the entries have data for; returns section name -> file name written."""
    written = {}
    calibration_report.save_reliability_diagram(
        os.path.join(report_dir, calibration_report.RELIABILITY_FILE),
        [(s.name, s.labels, s.probs, s.uncalibrated) for s in scores])
    written["calibration"] = calibration_report.RELIABILITY_FILE
    tables = {s.name: subgroups.subgroup_table(s.labels, s.probs, s.meta, bootstrap) for s in scores if s.meta}
    if tables:
        write_json(os.path.join(report_dir, subgroups.SUBGROUPS_FILE), json_ready(tables))
        written["subgroups"] = subgroups.SUBGROUPS_FILE
    points = {s.name: operating_points.operating_points(*s.validation, s.labels, s.probs, bootstrap, s.patients)
              for s in scores if s.validation is not None}
    if points:
        write_json(os.path.join(report_dir, operating_points.OPERATING_POINTS_FILE), json_ready(points))
        written["operating points"] = operating_points.OPERATING_POINTS_FILE
    return written
