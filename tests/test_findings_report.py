"""The report finding by finding: AUROCs equal scikit-learn's on the known rows, intervals resample
patients, the minimum-positives rule, the mean, and the table in metrics.json, the text and the page."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from contracts.labels import FINDINGS
from evaluation import findings, html_report, report, statistics

PATIENTS, PER_PATIENT, UNKNOWN_PATIENTS = 60, 4, 5
SCORED = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Pneumonia")
NINE_POSITIVES, TEN_POSITIVES, NINE_NEGATIVES = "Nodule", "Pneumonia", "Pneumothorax"


def _world(seed=0):
    """(labels (N, 14), probs (N, 14), patients): correlated within a patient; the last patients' rows
    unknown (-1) with P = 0.99, which would pull every AUROC down if counted as negatives."""
    rng = np.random.default_rng(seed)
    n, known = PATIENTS * PER_PATIENT, (PATIENTS - UNKNOWN_PATIENTS) * PER_PATIENT
    patients = np.repeat([f"p{i:02d}" for i in range(PATIENTS)], PER_PATIENT)
    labels = np.zeros((n, len(FINDINGS)), dtype=int)
    for j, prevalence in enumerate((0.2, 0.3, 0.25, 0.4, 0.3)):  # per patient, then per image
        sick = np.repeat(rng.random(PATIENTS) < prevalence, PER_PATIENT)
        labels[:, j] = sick & (rng.random(n) < 0.8)
    for name, count in ((NINE_POSITIVES, 9), (NINE_NEGATIVES, known - 9)):
        labels[rng.choice(known, count, replace=False), FINDINGS.index(name)] = 1
    # Ten positives in three patients: some resamples miss them all, and give no mean either.
    labels[:10, FINDINGS.index(TEN_POSITIVES)] = 1
    patient_effect = np.repeat(rng.normal(0, 0.15, PATIENTS), PER_PATIENT)[:, None]
    probs = np.clip(0.3 + 0.3 * labels + patient_effect + rng.normal(0, 0.2, labels.shape), 0, 1)
    labels[known:], probs[known:] = -1, 0.99
    return labels, probs, patients


def _sklearn_intervals(labels, probs, patients, resamples, names):
    """Per name and for their mean: the percentile interval of scikit-learn AUROCs over resamples of
    patients drawn as the report draws them (its seed; patients numbered by first appearance)."""
    firsts = sorted({p: i for i, p in reversed(list(enumerate(patients)))}.items(), key=lambda item: item[1])
    rows_of = [np.flatnonzero(patients == p) for p, _ in firsts]
    rng = np.random.default_rng(statistics.SEED)
    drawn = {name: [] for name in (*names, "mean")}  # the usable resamples' values
    for _ in range(resamples):
        index = np.concatenate([rows_of[d] for d in rng.integers(0, len(rows_of), len(rows_of))])
        values = []
        for name in names:
            y, p = labels[index, FINDINGS.index(name)], probs[index, FINDINGS.index(name)]
            values.append(roc_auc_score(y, p) if 0 < y.sum() < len(y) else np.nan)
            if np.isfinite(values[-1]):
                drawn[name].append(values[-1])
        if np.all(np.isfinite(values)):
            drawn["mean"].append(np.mean(values))
    return {name: ([np.percentile(v, 2.5), np.percentile(v, 97.5)], len(v)) for name, v in drawn.items()}


def test_per_finding_auroc_counts_and_prevalence_equal_scikit_learn_on_known_rows():
    labels, probs, patients = _world()
    got = findings.table(labels, probs, patients, bootstrap=0)
    known = (labels >= 0).all(axis=1)
    assert got["records_known"] == known.sum() and got["records_unknown"] == (~known).sum() > 0
    assert [row["finding"] for row in got["rows"]] == list(FINDINGS)
    for j, row in enumerate(got["rows"]):
        y, p = labels[known, j], probs[known, j]
        assert (row["positives"], row["negatives"]) == ((y == 1).sum(), (y == 0).sum()), row["finding"]
        assert row["prevalence"] == pytest.approx(y.mean())
        if row["finding"] in SCORED:
            assert row["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12), row["finding"]
    # Counting the unknown rows (P = 0.99) as negatives would pull this AUROC well down.
    effusion = FINDINGS.index("Effusion")
    assert roc_auc_score(labels[:, effusion] == 1, probs[:, effusion]) < got["rows"][effusion]["auroc"] - 0.05


def test_findings_under_the_minimum_show_their_counts_and_no_auroc():
    labels, probs, patients = _world()
    got = {row["finding"]: row for row in findings.table(labels, probs, patients, bootstrap=50)["rows"]}
    assert findings.MIN_POSITIVES == 10
    for name, positives in ((NINE_POSITIVES, 9), (NINE_NEGATIVES, None), ("Hernia", 0)):
        row = got[name]
        assert np.isnan(row["auroc"]) and row["auroc_ci95"] is None and "fewer than 10" in row["absent"]
        assert positives is None or row["positives"] == positives
    assert got[NINE_NEGATIVES]["negatives"] == 9
    assert got[TEN_POSITIVES]["positives"] == 10 and np.isfinite(got[TEN_POSITIVES]["auroc"])  # the boundary
    assert got[TEN_POSITIVES]["auroc_ci95"] is not None and got[TEN_POSITIVES]["absent"] is None


def test_intervals_and_the_mean_equal_scikit_learn_over_the_same_patient_resamples():
    labels, probs, patients = _world()
    got = findings.table(labels, probs, patients, bootstrap=200)
    known = (labels >= 0).all(axis=1)
    assert got["mean_over"] == list(SCORED)
    rows = {row["finding"]: row for row in got["rows"]}
    assert got["mean_auroc"] == pytest.approx(np.mean([
        roc_auc_score(labels[known, FINDINGS.index(n)], probs[known, FINDINGS.index(n)]) for n in SCORED]))
    expected = _sklearn_intervals(labels[known], probs[known], patients[known], 200, SCORED)
    for name in SCORED:
        assert rows[name]["auroc_ci95"] == pytest.approx(expected[name][0], abs=1e-9), name
        assert rows[name]["auroc_resamples_used"] == expected[name][1]
    assert got["mean_auroc_ci95"] == pytest.approx(expected["mean"][0], abs=1e-9)
    assert got["mean_auroc_resamples_used"] == expected["mean"][1] < 200  # some miss TEN_POSITIVES
    low, high = got["mean_auroc_ci95"]
    assert low < got["mean_auroc"] < high


def test_the_interval_resamples_patients_not_images():
    labels, probs, patients = _world(1)
    width = {}
    for copies in (1, 3):  # each image of each patient k times: as many patients, k times the images
        dup = [np.repeat(a, copies, axis=0) for a in (labels, probs, patients)]
        for by in ("patient", "image"):
            got = findings.table(dup[0], dup[1], dup[2] if by == "patient" else None, bootstrap=200)
            width[copies, by] = np.array([np.diff(r["auroc_ci95"])[0] for r in got["rows"]
                                          if r["finding"] in SCORED])
    assert width[3, "patient"] == pytest.approx(width[1, "patient"], abs=1e-12)
    assert (width[3, "image"] < 0.8 * width[1, "image"]).all()  # resampling images would narrow it


def test_a_split_without_finding_labels_gets_one_line():
    labels, probs, patients = _world()
    got = findings.table(np.full_like(labels, -1), probs, patients, bootstrap=50)
    assert "rows" not in got and got["records_known"] == 0 and "binary report only" in got["absent"]
    with pytest.raises(ValueError, match="must both be"):
        findings.table(labels[:, :5], probs[:, :5], patients, bootstrap=0)


def test_published_means_are_the_means_of_their_findings():
    for source in findings.PUBLISHED:
        assert set(source.auroc) == set(FINDINGS)
        assert np.mean(list(source.auroc.values())) == pytest.approx(source.mean, abs=6e-4), source.short


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.cells, self.items, self.paragraphs, self.open = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag not in ("img", "meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open.pop() == tag

    def handle_data(self, data):
        if self.open and self.open[-1] == "h2":
            self.headings.append(data)
        spot = {"td": self.cells, "li": self.items, "p": self.paragraphs}.get(self.open[-1] if self.open else "")
        if spot is not None:
            spot.append(data)


def _binary(labels):
    return (labels.max(axis=1) > 0).astype(int)


def test_metrics_json_printed_table_and_page(tmp_path):
    labels, probs, patients = _world()
    meta = {"patient_id": patients}
    binary, p_abnormal = _binary(labels), probs.max(axis=1)
    scores = [statistics.Scores("withfindings", binary, p_abnormal, 0.5, meta=meta, finding_labels=labels,
                                finding_probs=probs),
              statistics.Scores("binaryonly", binary, p_abnormal, 0.5, meta=meta),
              statistics.Scores("unknownfindings", binary, p_abnormal, 0.5, meta=meta,
                                finding_labels=np.full_like(labels, -1), finding_probs=probs)]
    written = report.write_report(str(tmp_path), scores, bootstrap=100)
    on_disk = json.loads((tmp_path / report.METRICS_FILE).read_text())
    assert on_disk == written and findings.KEY not in on_disk["binaryonly"]
    known = (labels >= 0).all(axis=1)
    table = on_disk["withfindings"][findings.KEY]
    for row in table["rows"]:
        j = FINDINGS.index(row["finding"])
        assert (row["auroc"] is None) == (row["finding"] not in SCORED)
        if row["auroc"] is not None:
            assert row["auroc"] == pytest.approx(roc_auc_score(labels[known, j], probs[known, j]))
    assert "rows" not in on_disk["unknownfindings"][findings.KEY]
    # The binary numbers are those of the same entry without finding labels.
    assert {k: v for k, v in on_disk["withfindings"].items() if k != findings.KEY} == on_disk["binaryonly"]

    text = report.format_table(written)
    binary_only = {name: {k: v for k, v in entry.items() if k != findings.KEY} for name, entry in written.items()}
    assert text.startswith(report.format_table(binary_only) + "\n\n")  # the binary table first, as it was
    lines = text[len(report.format_table(binary_only)):].splitlines()
    assert max(map(len, lines)) <= 100  # the per-finding part fits a terminal
    atelectasis = next(line for line in lines if line.startswith("Atelectasis"))
    assert f"{table['rows'][0]['auroc']:.3f}" in atelectasis and "0.716" in atelectasis and "0.76" in atelectasis
    assert "n<10" in next(line for line in lines if line.startswith(NINE_POSITIVES))
    mean = next(line for line in lines if line.startswith("mean (6 of 14)"))
    assert f"{table['mean_auroc']:.3f}" in mean and all(m in mean for m in ("0.738", "0.841", "0.838", "0.774"))
    assert "for scale only" in text and "unknownfindings per finding: none of its 240 records has finding labels" in text
    assert sum("per finding" in line for line in lines) == 2  # not for the binary-only entry

    page = _Page()
    with open(html_report.write_index(str(tmp_path))) as f:
        page.feed(f.read())
    assert not page.open and page.headings[:2] == ["Metrics", "Per finding"]
    assert f"{table['mean_auroc']:.3f}" in page.cells and "0.841" in page.cells and "n<10" in page.cells
    assert all(f"{s.short}: {s.citation}" in page.items for s in findings.PUBLISHED)
    assert "none of its 240 records has finding labels" in " ".join(page.paragraphs)


def test_a_report_without_finding_labels_is_unchanged(tmp_path):
    labels, probs, patients = _world()
    scores = [statistics.Scores("m", _binary(labels), probs.max(axis=1), 0.5, meta={"patient_id": patients})]
    written = report.write_report(str(tmp_path), scores, bootstrap=50)
    assert findings.KEY not in written["m"]
    text = report.format_table(written)
    assert "per finding" not in text and "for scale only" not in text and not text.endswith("\n")
    page = _Page()
    with open(html_report.write_index(str(tmp_path))) as f:
        page.feed(f.read())
    assert "Per finding" not in page.headings and not page.items
