"""The report's triage section: groups and rates equal numpy's on the known labels, intervals resample
patients, the risk–coverage curve and AURC equal a brute-force loop (ties as one block), and the
section in metrics.json, the printed table and the page, only for entries with a triage."""

import itertools
import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest

from evaluation import html_report, report, statistics, triage, triage_report

PATIENTS, PER_PATIENT, UNKNOWN_LABELS, NO_PATIENT = 80, 3, 12, 6
THRESHOLD = 0.3  # off-centre: the confidence's scaling by the room on each side matters


def _calibration_triage(spread=True):
    """A Triage fitted on made-up calibration images, apart from the scored ones."""
    rng = np.random.default_rng(7)
    labels = (rng.random(700) < 0.4).astype(int)
    probs = np.clip(0.25 + 0.45 * labels + rng.normal(0, 0.18, 700), 0, 1)
    return triage.fit(labels, probs, rng.gamma(2, 0.02, 700) if spread else None, triage.TriageSettings(),
                      files=["calibration.csv"], exact=False)


def _scored(seed=0):
    """(labels, probs rounded to 0.02 so confidences tie, five at the threshold, spread, patients):
    images of a patient correlated; the last UNKNOWN_LABELS images unlabelled (-1) at P = 0.01, which
    would be cleared normals if counted; NO_PATIENT images without a patient id (their own clusters)."""
    rng = np.random.default_rng(seed)
    n = PATIENTS * PER_PATIENT
    sick = np.repeat(rng.random(PATIENTS) < 0.45, PER_PATIENT)
    labels = (sick & (rng.random(n) < 0.85)).astype(int)
    effect = np.repeat(rng.normal(0, 0.1, PATIENTS), PER_PATIENT)
    probs = np.round(np.clip(0.25 + 0.45 * labels + effect + rng.normal(0, 0.15, n), 0, 1) / 0.02) * 0.02
    patients = np.repeat([f"p{i:02d}" for i in range(PATIENTS)], PER_PATIENT).astype(object)
    patients[rng.choice(n - UNKNOWN_LABELS, NO_PATIENT, replace=False)] = ""
    probs[:5] = THRESHOLD  # decided abnormal (p >= t), with no confidence
    labels[-UNKNOWN_LABELS:], probs[-UNKNOWN_LABELS:] = -1, 0.01
    return labels, probs, rng.gamma(2, 0.02, n), patients


def _entry(name="ensemble", fitted=None, seed=0):
    labels, probs, spread, patients = _scored(seed)
    return statistics.Scores(name, labels, probs, THRESHOLD, meta={"patient_id": patients},
                             triage=fitted if fitted is not None else _calibration_triage(), spread=spread)


def _expected_groups(entry):
    """Each known image's group from the thresholds and the spread limit, by numpy."""
    known = entry.labels >= 0
    p, s = entry.probs[known], entry.spread[known]
    rule_out, rule_in = entry.triage.rule_out.threshold, entry.triage.rule_in.threshold
    low, high, unsure = p < rule_out, p >= rule_in, s > entry.triage.spread_limit
    unsure = unsure | (low & high)
    return low & ~unsure, high & ~unsure, entry.labels[known]


def test_groups_and_rates_equal_numpy_on_the_known_labels():
    entry = _entry()
    got = triage_report.section_of(entry, bootstrap=0)[triage_report.KEY]
    cleared, prioritized, y = _expected_groups(entry)
    review = ~cleared & ~prioritized
    assert (entry.spread[entry.labels >= 0] > entry.triage.spread_limit).sum() > 0  # the limit sorts some
    assert got["images"] == len(y) == len(entry.labels) - UNKNOWN_LABELS
    for name, members in (("cleared", cleared), ("review", review), ("prioritized", prioritized)):
        assert got["groups"][name] == {"images": members.sum(), "share": pytest.approx(members.mean())}, name
    assert got["miss_rate"] == pytest.approx((cleared & (y == 1)).sum() / (y == 1).sum())
    assert got["false_alarm_rate"] == pytest.approx((prioritized & (y == 0)).sum() / (y == 0).sum())
    assert got["abnormal_among_cleared"] == pytest.approx((y[cleared] == 1).mean())
    assert got["normal_among_prioritized"] == pytest.approx((y[prioritized] == 0).mean())
    calibration = entry.triage.calibration
    assert (got["calibration"]["images"], got["calibration"]["abnormal"], got["calibration"]["normal"]) == (
        700, calibration["abnormal"], 700 - calibration["abnormal"])
    assert got["guarantee"] == "approximate" and got["calibration"]["note"] == triage.APPROXIMATE
    assert got["rule_out"]["threshold"] == entry.triage.rule_out.threshold
    assert got["rule_out"]["bound"] == entry.triage.rule_out.bound <= got["alpha"] == 0.05
    assert got["rule_in"]["bound"] == entry.triage.rule_in.bound <= got["beta"] == 0.1


def _first_appearance_clusters(patients):
    """Rows of each cluster as statistics.clusters numbers them: known patients by first appearance,
    then each image without a patient alone."""
    named = [p for p in dict.fromkeys(patients) if p != ""]
    return [np.flatnonzero(patients == p) for p in named] + [[i] for i in np.flatnonzero(patients == "")]


def test_rate_intervals_equal_an_independent_bootstrap_over_the_same_patient_resamples():
    entry, resamples = _entry(), 300
    got = triage_report.section_of(entry, bootstrap=resamples)[triage_report.KEY]
    cleared, prioritized, y = _expected_groups(entry)
    rows_of = _first_appearance_clusters(entry.patients[entry.labels >= 0])
    rng = np.random.default_rng(statistics.SEED)
    drawn = {"miss_rate": [], "false_alarm_rate": []}
    for _ in range(resamples):
        index = np.concatenate([rows_of[d] for d in rng.integers(0, len(rows_of), len(rows_of))])
        for name, hit, among in (("miss_rate", cleared, 1), ("false_alarm_rate", prioritized, 0)):
            members = y[index] == among
            if members.any():
                drawn[name].append(hit[index][members].mean())
    for name, values in drawn.items():
        assert got[f"{name}_ci95"] == pytest.approx([np.percentile(values, 2.5), np.percentile(values, 97.5)],
                                                    abs=1e-12), name
        assert got[f"{name}_resamples_used"] == len(values)
        low, high = got[f"{name}_ci95"]
        assert low <= got[name] <= high and high > low


def _brute_force(labels, probs, threshold):
    """Risk at each k = 1..N by a loop: the images more confident than the k-th all kept, and the k-th's
    tied block contributing its error rate for each of its kept places."""
    sure, wrong = [], []
    for p, y in zip(probs, labels):
        sure.append((p - threshold) / (1 - threshold) if p >= threshold else (threshold - p) / threshold)
        wrong.append(int(p >= threshold) != y)
    sure, wrong = np.array(sure), np.array(wrong, dtype=float)
    ranked = sorted(sure, reverse=True)
    risks = []
    for k in range(1, len(sure) + 1):
        more, tied = sure > ranked[k - 1], sure == ranked[k - 1]
        risks.append((wrong[more].sum() + (k - more.sum()) * wrong[tied].mean()) / k)
    return np.array(risks)


def test_risk_coverage_and_aurc_equal_a_brute_force_loop():
    entry = _entry()
    known = entry.labels >= 0
    y, p = entry.labels[known], entry.probs[known]
    expected = _brute_force(y, p, THRESHOLD)
    assert len(np.unique(triage_report.confidence(p, THRESHOLD))) < len(p) / 3  # ties abound
    coverage, risk = triage_report.risk_coverage(y, p, THRESHOLD)
    assert coverage == pytest.approx(np.arange(1, len(y) + 1) / len(y), abs=0)
    assert risk == pytest.approx(expected, abs=1e-12)
    assert risk[-1] == pytest.approx(np.mean((p >= THRESHOLD) != y))  # full coverage: the error rate
    got = triage_report.section_of(entry, bootstrap=0)[triage_report.KEY]
    assert got["aurc"] == pytest.approx(expected.mean(), abs=1e-12)
    n = len(y)
    at = [math.ceil(j * n / triage_report.CURVE_POINTS) for j in range(1, triage_report.CURVE_POINTS + 1)]
    assert got["risk_coverage"]["coverage"] == pytest.approx([k / n for k in at], abs=0)
    assert got["risk_coverage"]["risk"] == pytest.approx(expected[np.array(at) - 1], abs=1e-12)


def test_a_tied_block_counts_as_the_mean_over_every_order_of_it():
    # Confidences: two blocks of three tied images (p and 1 - p mirror about 0.5, exact in binary)
    # and one alone.
    labels = np.array([1, 0, 0, 1, 1, 0, 1])
    probs = np.array([0.875, 0.875, 0.125, 0.75, 0.25, 0.25, 0.5])
    _, risk = triage_report.risk_coverage(labels, probs, 0.5)
    wrong = ((probs >= 0.5) != labels).astype(float)
    sure = np.abs(probs - 0.5) / 0.5
    blocks = [np.flatnonzero(sure == c) for c in sorted(set(sure), reverse=True)]
    curves = [np.cumsum(wrong[np.concatenate(orders)]) / np.arange(1, len(probs) + 1)
              for orders in itertools.product(*(itertools.permutations(b) for b in blocks))]
    assert len(curves) == 36 and risk == pytest.approx(np.mean(curves, axis=0), abs=1e-12)
    order = np.random.default_rng(0).permutation(len(probs))  # no input order shows
    assert triage_report.risk_coverage(labels[order], probs[order], 0.5)[1] == pytest.approx(risk, abs=1e-12)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.cells, self.paragraphs, self.images, self.open = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in ("meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open.pop() == tag

    def handle_data(self, data):
        spot = {"h2": self.headings, "td": self.cells, "p": self.paragraphs}.get(self.open[-1] if self.open else "")
        if spot is not None:
            spot.append(data)


def _page(folder):
    page = _Page()
    with open(html_report.write_index(str(folder))) as f:
        page.feed(f.read())
    return page


def test_metrics_json_printed_table_and_page(tmp_path):
    few = np.array([1] * 20 + [0] * 60)  # too few abnormal images for a rule-out threshold
    infeasible = triage.fit(few, np.linspace(0, 1, 80), None, triage.TriageSettings(), files=["c.csv"],
                            exact=True)
    assert infeasible.rule_out.threshold is None
    scores = [_entry(), _entry("alone", infeasible), _entry("plain")]
    scores[2] = statistics.Scores("plain", scores[2].labels, scores[2].probs, THRESHOLD, meta=scores[2].meta)
    written = report.write_report(str(tmp_path), scores, bootstrap=100)
    on_disk = json.loads((tmp_path / report.METRICS_FILE).read_text())
    assert on_disk == written and triage_report.KEY not in on_disk["plain"]
    ours = on_disk["ensemble"][triage_report.KEY]
    assert ours == json.loads(json.dumps(triage_report.section_of(scores[0], 100)[triage_report.KEY]))
    alone = on_disk["alone"][triage_report.KEY]
    assert alone["groups"]["cleared"]["images"] == 0 and alone["miss_rate"] == 0.0
    assert alone["abnormal_among_cleared"] is None and alone["rule_out"]["threshold"] is None  # NaN: null
    assert alone["guarantee"] == "exact" and alone["calibration"]["note"] is None
    assert (tmp_path / triage_report.FIGURE_FILE).is_file()

    text = report.format_table(written)
    without = {name: {k: v for k, v in entry.items() if k != triage_report.KEY} for name, entry in written.items()}
    assert text.startswith(report.format_table(without) + "\n\n")  # the main table first, as it was
    part = text[len(report.format_table(without)):]
    assert part.split("\n")[2].split() == ["triage", "ensemble", "alone"]
    miss = next(line for line in part.splitlines() if line.startswith("miss rate"))
    low, high = ours["miss_rate_ci95"]
    assert f"{ours['miss_rate']:.3f} [{low:.3f}, {high:.3f}]" in miss
    assert f"none: short by {infeasible.rule_out.shortfall}" in part
    assert "approximate (0.1)" in part and "exact (0.1)" in part
    assert f"{scores[0].triage.spread_limit:.4f}" in next(line for line in part.splitlines() if "spread" in line)
    full = next(line for line in part.splitlines() if "full coverage" in line)
    y, p = scores[0].labels[scores[0].labels >= 0], scores[0].probs[scores[0].labels >= 0]
    assert f"{np.mean((p >= THRESHOLD) != y):.3f}" in full  # AURC's scale: the error rate at the threshold
    assert triage.EXCHANGEABLE in " ".join(part.split()) and triage.APPROXIMATE in " ".join(part.split())
    assert max(map(len, part.splitlines())) <= 100
    twice = " ".join(triage_report.format_triage({"a": written["ensemble"], "b": written["ensemble"]}).split())
    assert twice.count(triage.APPROXIMATE) == 1 and f"a, b: {triage.APPROXIMATE}" in twice  # one line a reason

    page = _page(tmp_path)
    assert not page.open and "Triage" in page.headings and triage_report.FIGURE_FILE in page.images
    assert triage.EXCHANGEABLE in page.paragraphs
    assert f"{ours['miss_rate']:.3f} [{low:.3f}, {high:.3f}]" in page.cells and "exact (0.1)" in page.cells


def test_the_figure_draws_each_entry_with_a_triage_from_its_curve():
    scores = [_entry(), _entry("plain")]
    scores[1] = statistics.Scores("plain", scores[1].labels, scores[1].probs, THRESHOLD)
    lines = triage_report.figure(scores, 0).axes[0].get_lines()
    known = scores[0].labels >= 0
    coverage, risk = triage_report.risk_coverage(scores[0].labels[known], scores[0].probs[known], THRESHOLD)
    assert len(lines) == 1 and lines[0].get_label().startswith("ensemble (AURC")
    assert np.array_equal(lines[0].get_xdata(), coverage) and np.array_equal(lines[0].get_ydata(), risk)


def test_a_report_without_triage_has_no_section(tmp_path):
    entry = _entry()
    plain = statistics.Scores("m", entry.labels, entry.probs, THRESHOLD, meta=entry.meta, spread=entry.spread)
    written = report.write_report(str(tmp_path), [plain], bootstrap=20)
    assert triage_report.KEY not in written["m"] and triage_report.format_triage(written) == ""
    assert "triage" not in report.format_table(written) and not (tmp_path / triage_report.FIGURE_FILE).exists()
    page = _page(tmp_path)
    assert "Triage" not in page.headings and triage.EXCHANGEABLE not in page.paragraphs


def test_a_rate_every_resample_repeats_gets_the_exact_binomial_interval_not_none():
    # Catches (found in review): 0 misses of 60 printed as 0.000 with no interval, as if certain.
    from scipy.stats import binomtest

    from evaluation.triage_report import exact_interval, section_of

    labels = np.r_[np.ones(60, int), np.zeros(60, int)]
    probs = np.r_[np.linspace(0.6, 1.0, 60), np.linspace(0.0, 0.5, 60)]
    fitted = triage.fit(labels, probs, None, triage.TriageSettings(), files=["c"], exact=True)
    patients = np.array([f"p{i // 2}" for i in range(120)])
    entry = statistics.Scores("m", labels, probs, 0.5, meta={"patient_id": patients}, triage=fitted)
    section = section_of(entry, 200)["triage"]
    abnormal_cleared = int(((probs < fitted.rule_out.threshold) & (labels == 1)).sum())
    assert abnormal_cleared == 0 and section["miss_rate"] == 0.0
    expected = binomtest(0, 60).proportion_ci(0.95, method="exact")
    assert section["miss_rate_ci95"] == pytest.approx([expected.low, expected.high], abs=1e-12)
    assert exact_interval(3, 10) == pytest.approx(list(binomtest(3, 10).proportion_ci(0.95, "exact")), abs=1e-12)
