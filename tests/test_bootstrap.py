"""The report's intervals resample patients: every section against a plain resampling loop, and a
constructed case (each patient's images duplicated k times) run through ensemble.py and predict.py."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from contracts.prediction_files import PATIENT, SEX, read_predictions, write_predictions
from evaluation import ensembling, operating_points, report, statistics, subgroups
from evaluation.settings import EnsembleConfig, PredictConfig

RESAMPLES = 200


def _plain_clusters(patients):
    """Cluster of each record: known patients by first appearance, then each unknown record alone."""
    order = {}
    for p in patients:
        if p and p not in order:
            order[p] = len(order)
    alone = iter(range(len(order), len(order) + sum(not p for p in patients)))
    return np.array([order[p] if p else next(alone) for p in patients])


def _plain_resamples(cluster_of, resamples=RESAMPLES):
    """Index arrays of the records of `resamples` draws of clusters with replacement (the report's seed)."""
    members = [np.flatnonzero(cluster_of == c) for c in range(cluster_of.max() + 1)]
    rng = np.random.default_rng(statistics.SEED)
    for _ in range(resamples):
        yield np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))])


def _percentiles(values):
    return [np.percentile(values, 2.5), np.percentile(values, 97.5)]


def _auroc(y, p):
    return roc_auc_score(y, p) if len(set(y)) == 2 else None


@pytest.fixture()
def patients_data():
    """70 images of 25 patients (1-5 images, labels and scores shared within a patient) and 6 without one."""
    rng = np.random.default_rng(4)
    patients, labels, probs = [], [], []
    for patient in range(25):
        sick = rng.random() < 0.4
        for _ in range(rng.integers(1, 6)):
            patients.append(f"p{patient:03d}")
            labels.append(int(sick if rng.random() < 0.85 else not sick))
            probs.append(round(float(np.clip(0.35 + 0.3 * sick + rng.normal(0, 0.2), 0, 1)), 2))  # ties too
    for _ in range(6):
        patients.append("")
        labels.append(int(rng.random() < 0.4))
        probs.append(round(float(rng.random()), 2))
    return np.array(patients), np.array(labels), np.array(probs)


def test_every_interval_equals_a_plain_resampling_of_patients(patients_data):
    patients, labels, probs = patients_data
    cluster_of = _plain_clusters(list(patients))
    threshold = 0.5
    accuracies, aurocs = [], []
    for index in _plain_resamples(cluster_of):
        accuracies.append(accuracy_score(labels[index], probs[index] >= threshold))
        aurocs.append(_auroc(labels[index], probs[index]))
    got = statistics.compute_metrics(labels, probs, threshold, bootstrap=RESAMPLES, patients=patients)
    assert got["accuracy_ci95"] == pytest.approx(_percentiles(accuracies), abs=1e-12)
    assert got["auroc_ci95"] == pytest.approx(_percentiles([a for a in aurocs if a is not None]), abs=1e-12)
    assert got["auroc_resamples_used"] == sum(a is not None for a in aurocs)
    assert got["bootstrap_by"] == "patient" and got["patients"] == 25 and got["images_without_patient"] == 6
    assert got["images_per_patient"] == pytest.approx((len(labels) - 6) / 25)

    # Operating points: sensitivity and specificity at a threshold chosen on validation.
    rows = operating_points.operating_points(labels, probs, labels, probs, RESAMPLES, patients)
    row = rows[0]
    sens, spec = [], []
    for index in _plain_resamples(cluster_of):
        y, decided = labels[index], probs[index] >= row["threshold"]
        if (y == 1).any():
            sens.append(decided[y == 1].mean())
        if (y == 0).any():
            spec.append((~decided[y == 0]).mean())
    assert row["test_sensitivity_ci95"] == pytest.approx(_percentiles(sens), abs=1e-12)
    assert row["test_specificity_ci95"] == pytest.approx(_percentiles(spec), abs=1e-12)

    # A subgroup resamples its own patients: those with a record in the group, numbered as before.
    sex = np.array(["M" if i % 3 else "F" for i in range(len(labels))])
    table = subgroups.subgroup_table(labels, probs, {PATIENT: patients, SEX: sex}, RESAMPLES)
    female = next(r for r in table if r["group"] == "F")
    members = np.flatnonzero(sex == "F")
    _, in_group = np.unique(cluster_of[members], return_inverse=True)
    group_aurocs = [_auroc(labels[members][i], probs[members][i]) for i in _plain_resamples(in_group.reshape(-1))]
    assert female["auroc_ci95"] == pytest.approx(_percentiles([a for a in group_aurocs if a is not None]), abs=1e-12)
    assert female["patients"] == len(set(patients[members]) - {""})

    # The paired difference draws the same patients for both models.
    other = np.clip(probs + np.random.default_rng(1).normal(0, 0.1, len(probs)), 0, 1)
    differences = [roc_auc_score(labels[i], probs[i]) - roc_auc_score(labels[i], other[i])
                   for i in _plain_resamples(cluster_of) if len(set(labels[i])) == 2]
    paired = statistics.paired_auroc_difference(labels, probs, other, RESAMPLES, patients)
    assert paired["ci95"] == pytest.approx(_percentiles(differences), abs=1e-12)
    assert paired["resamples_used"] == len(differences)


def test_an_interval_that_cannot_be_formed_is_absent_never_a_point():
    labels, probs = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])
    one_patient = statistics.compute_metrics(labels, probs, 0.5, bootstrap=50, patients=np.array(["a"] * 4))
    assert one_patient["auroc_ci95"] is None and one_patient["accuracy_ci95"] is None
    assert one_patient["auroc_resamples_used"] == 50  # every resample is the one patient: usable, but no spread
    # One image per class: most resamples hold a single class and are skipped, and the count says so.
    sparse = statistics.compute_metrics(np.array([0, 1, 0, 0, 0]), np.array([0.1, 0.9, 0.2, 0.3, 0.4]), 0.5,
                                        bootstrap=100)
    drawn = [_auroc(np.array([0, 1, 0, 0, 0])[i], np.zeros(5)[i])
             for i in _plain_resamples(np.arange(5), 100)]
    assert sparse["auroc_resamples_used"] == sum(a is not None for a in drawn) < 100


def _widths(metrics, name):
    low, high = metrics[name]["auroc_ci95"]
    return high - low


def _write(path, ids, probs, labels, patients, backbone):
    meta = None if patients is None else {PATIENT: np.asarray(patients)}
    write_predictions(str(path), ids, probs, labels, {"backbone": backbone}, meta=meta)
    return str(path)


def test_duplicated_images_narrow_image_intervals_by_sqrt_k_but_not_patient_intervals(tmp_path):
    """Through ensemble.py: k=4 copies of each patient's one image, with and without the patient column."""
    rng = np.random.default_rng(0)
    n, k = 200, 4
    labels = (rng.random(n) < 0.4).astype(int)
    members = np.stack([np.clip(0.4 + 0.2 * labels + rng.normal(0, 0.2, n), 0, 1) for _ in range(2)], axis=1)
    names = ("efficientnet_b3", "resnet50")
    ids = [f"{i}.png" for i in range(n)]
    copies = [f"{i}_{c}.png" for i in range(n) for c in range(k)]
    runs = {}
    for case, case_ids, rows, patients in (
            ("base", ids, np.arange(n), [str(i) for i in range(n)]),
            ("patients", copies, np.repeat(np.arange(n), k), [str(i) for i in np.repeat(np.arange(n), k)]),
            ("images", copies, np.repeat(np.arange(n), k), None)):  # a file without the patient column
        paths = [_write(tmp_path / f"{case}.{name}.csv", case_ids, members[rows, m], labels[rows],
                        patients, name) for m, name in enumerate(names)]
        ensembling.run_ensemble(EnsembleConfig(paths, str(tmp_path / f"{case}.csv"), blend_weight=[1, 1],
                                               threshold=0.5, report_dir=str(tmp_path / case),
                                               bootstrap=RESAMPLES))
        with open(tmp_path / case / report.METRICS_FILE) as f:
            runs[case] = json.load(f)
    base = _widths(runs["base"], "ensemble")
    # The same patients drawn, each carrying k equal images: the very same AUROCs, the same interval.
    assert _widths(runs["patients"], "ensemble") == pytest.approx(base, rel=1e-9)
    assert runs["patients"]["ensemble"]["patients"] == n and runs["patients"]["ensemble"]["images_per_patient"] == k
    # Resampling images as if independent: about sqrt(k) = 2 times too narrow.
    assert 0.4 < _widths(runs["images"], "ensemble") / base < 0.65
    assert runs["images"]["ensemble"]["images_without_patient"] == n * k


@pytest.mark.slow
def test_predict_report_resamples_the_patients_of_the_shards(tmp_path):
    """Through predict.py: the shards' patient ids reach the prediction file and the report's intervals."""
    from evaluation import prediction
    from tests.shard_factory import write_shards
    from tests.test_predict import _save_model

    records, k = 60, 4
    widths, files = {}, {}
    for case, copies in (("base", 1), ("copies", k)):
        shards = str(tmp_path / f"{case}_shards")
        write_shards(shards, {"eval": records}, image_size=32, shards_per_split=1, copies=copies)
        model_dir = str(tmp_path / "run")
        if case == "base":
            _save_model(model_dir, shards)
        out = str(tmp_path / f"{case}.csv")
        prediction.run_prediction(PredictConfig(model_dir=[model_dir], data_dir=shards, split="eval",
                                                output=out, global_batch_size=16, bootstrap=RESAMPLES,
                                                threshold=0.5, report_dir=str(tmp_path / f"{case}_report"),
                                                progress=False))
        with open(tmp_path / f"{case}_report" / report.METRICS_FILE) as f:
            metrics = json.load(f)["tiny_test"]
        files[case] = read_predictions(out)
        # Accuracy: the untrained model ranks these shards perfectly (AUROC 0 in every resample).
        widths[case] = metrics["accuracy_ci95"][1] - metrics["accuracy_ci95"][0]
        assert metrics["bootstrap_by"] == "patient" and metrics["patients"] == records // 3
    # write_shards gives image i to patient i // 3: the file carries it, for every copy.
    expected = [str(int(i.split("_")[1]) // 3) for i in files["copies"].ids]
    assert list(files["copies"].meta[PATIENT]) == expected
    assert widths["copies"] == pytest.approx(widths["base"], rel=1e-6)
    # The same predictions resampled by image (a second path: no patient ids): about sqrt(k) narrower.
    by_image = statistics.compute_metrics(files["copies"].labels, files["copies"].probs, 0.5, bootstrap=RESAMPLES)
    assert 0.35 < (by_image["accuracy_ci95"][1] - by_image["accuracy_ci95"][0]) / widths["base"] < 0.7
