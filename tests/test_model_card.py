"""MODEL_CARD.md: every number in it equals one computed here from the files it came from, read with json."""

import json
import os
import re
import subprocess
import sys

import pytest

from contracts import ensemble_file
from evaluation import ensembling, prediction
from evaluation.settings import EnsembleConfig, PredictConfig
from preprocess import builder, synthetic_data
from preprocess.config import BuildConfig
from serving import exporter
from serving.config import ExportConfig
from training.config import TrainConfig
from training.loop import run_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROSE_NUMBERS = {"95", "90", "73", "2017"}  # the card's own text: 95% intervals, the NIH label figures, CVPR 2017
NUMBER = re.compile(r"(?<![\w\-])[+\-]?\d+(?:\.\d+)?(?!\w)")


def _json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic NIH-format data built by the real builder, two tiny runs, predict.py's report of
    each alone and of both, ensemble.py's (fitted on validation) and the exports."""
    root = tmp_path_factory.mktemp("card")
    data, shards = str(root / "data"), str(root / "shards")
    synthetic_data.generate(synthetic_data.SyntheticConfig(output_dir=data, preset="easy", num_patients=40,
                                                           source_size=64, seed=1))
    builder.build(BuildConfig(data_entry_csv=os.path.join(data, "Data_Entry_2017_v2020.csv"), image_dir=data,
                              output_dir=shards, split_by="grouped", val_fraction=0.25, test_fraction=0.3,
                              image_size=32, workers=1, crop="none", min_image_side=64))
    dirs = []
    for seed in (0, 1):
        dirs.append(str(root / f"run{seed}"))
        run_training(TrainConfig(backbone="tiny_test", data_dir=shards, weights="none", global_batch_size=8,
                                 epochs=2, precision="float32", strategy="default", seed=seed, deterministic=True,
                                 model_dir=dirs[-1]))

    def predict(model_dirs, output):
        return prediction.run_prediction(PredictConfig(
            model_dir=model_dirs, data_dir=shards, split="test", output=str(root / output), global_batch_size=8,
            strategy="default", precision="float32", bootstrap=50, progress=False))

    both = predict(dirs, "both/test.csv")
    alone = predict(dirs[:1], "alone/test.csv")
    submission = str(root / "ens" / "submission.csv")
    ensembling.run_ensemble(EnsembleConfig(list(both.outputs.values()), submission,
                                           fit_on=[os.path.join(d, "val_predictions.csv") for d in dirs],
                                           fit_step=0.1, bootstrap=50))
    return {"root": root, "shards": shards, "dirs": dirs, "alone_report": alone.report_dir,
            "predictions": list(both.outputs.values()),
            "both_report": both.report_dir, "ensemble": ensemble_file.ensemble_path(submission),
            "ensemble_report": str(root / "ens" / "submission_report")}


def _export(world, name, dirs, **settings):
    export_dir = str(world["root"] / "served" / name)
    exporter.run_export(ExportConfig(dirs, export_dir, **settings))
    with open(os.path.join(export_dir, "MODEL_CARD.md")) as f:
        return f.read(), _json(export_dir, "export.json")


@pytest.fixture(scope="module")
def ensemble_card(world):
    return _export(world, "ensemble", world["dirs"], ensemble=world["ensemble"])


def _tables(card):
    """{heading: [{column: cell}]} for every markdown table, under the heading above it."""
    tables, heading, lines = {}, None, card.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")))))
            tables[heading] = rows
    return tables


def _row(table, column, value):
    found = [r for r in table if r[column] == value]
    assert len(found) == 1, (column, value, table)
    return found[0]


def _numbers(value, out):
    """Every number inside a JSON value (dict keys' values, lists, nested), into `out`."""
    if isinstance(value, dict):
        for item in value.values():
            _numbers(item, out)
    elif isinstance(value, list):
        for item in value:
            _numbers(item, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.append(float(value))
    return out


def _source_numbers(info, report_dir):
    """Every number the card may print, from its sources, read here without the card module."""
    values = _numbers({k: v for k, v in info.items() if k != "signatures"}, [])
    for member in info["members"]:
        run = member["model_dir"]
        config, sidecar = _json(run, "config.json"), _json(run, "val_predictions.json")
        values += _numbers([sidecar["epoch"], sidecar["temperature"], sidecar["calibration"],
                            sidecar.get("precision_parity")], [])
        with open(os.path.join(run, "metrics.jsonl")) as f:
            values += [json.loads(line)["val_auroc"] for line in f]
        manifest = _json(config["data_dir"], "manifest.json")
        values += _numbers([manifest["splits"], manifest["patient_overlap"], manifest["config"]], [])
        values += [s["abnormal"] / s["records"] for s in manifest["splits"].values()]
    if report_dir:
        for name in ("metrics.json", "operating_points.json", "subgroups.json", "ensemble_gain.json"):
            if os.path.exists(os.path.join(report_dir, name)):
                values += _numbers(_json(report_dir, name), [])
    return values


def _printed(token, value):
    decimals = len(token.split(".")[1]) if "." in token else 0
    return f"{value:+.{decimals}f}" == token if token[0] in "+-" else f"{value:.{decimals}f}" == token


def assert_every_number_from(card, values):
    """Each number outside `code` spans equals, as printed, a value of the card's sources."""
    prose = re.sub(r"`[^`]*`", "", card)
    tokens = NUMBER.findall(prose)
    assert len(tokens) > 25, tokens  # the check bites only on a card full of numbers
    unexplained = [t for t in tokens if t not in PROSE_NUMBERS and not any(_printed(t, v) for v in values)]
    assert not unexplained, unexplained


def _evaluation_rows_match(card, report_dir, shards):
    metrics, manifest = _json(report_dir, "metrics.json"), _json(shards, "manifest.json")
    table = _tables(card)["Evaluation"]
    assert [r["model"] for r in table] == [f"`{n}`" for n in metrics]
    for name, entry in metrics.items():
        row = _row(table, "model", f"`{name}`")
        assert row["split"] == "`test`" and entry["split"] == "test"
        assert row["images"] == str(entry["records"]) == str(manifest["splits"]["test"]["records"])
        assert row["AUROC"] == f"{entry['auroc']:.3f}"
        ci = entry["auroc_ci95"]
        assert row["AUROC 95% CI"] == ("not formed" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]")
        for key in ("accuracy", "sensitivity", "specificity"):
            assert row[key] == f"{entry[key]:.3f}", key
        assert row["at threshold"] == f"{entry['threshold']:.4f}"
    return metrics


def test_every_number_of_an_ensembles_card_comes_from_its_files(world, ensemble_card):
    # Regressions: the interval's bounds swapped in fmt_interval; the data table's counts from another
    # split; the threshold from metrics.json's member instead of export.json; temperatures zipped
    # against the members reversed.
    card, info = ensemble_card
    assert_every_number_from(card, _source_numbers(info, world["ensemble_report"]))
    metrics = _evaluation_rows_match(card, world["ensemble_report"], world["shards"])
    assert any(e["auroc_ci95"] for e in metrics.values())  # the interval check bites only with one formed
    assert f"`{world['ensemble_report']}`" in card  # found through the ensemble file, no flag given
    manifest = _json(world["shards"], "manifest.json")
    for split, counts in manifest["splits"].items():
        row = _row(_tables(card)["Training data"], "split", f"`{split}`")
        assert [row["records"], row["normal"], row["abnormal"], row["patients"]] == [
            str(counts[k]) for k in ("records", "normal", "abnormal", "patients")]
        assert row["prevalence"] == f"{counts['abnormal'] / counts['records']:.3f}"
    assert f"Abnormal when P(abnormal) ≥ {info['threshold']:.4f}: chosen on" in card
    temperatures = {m["name"]: m["temperature"] for m in info["members"]}
    assert len({f"{t:.3f}" for t in temperatures.values()}) == 2  # a mislabel shows only between two values
    for heading in ("Model", "Calibration"):
        for name, temperature in temperatures.items():
            assert _row(_tables(card)[heading], "member", f"`{name}`")["temperature"] == f"{temperature:.3f}"
    assert "synthetic NIH-format data" in card and "Trained and scored on synthetic images" in card
    assert "Research only: not a medical device" in card and "ChestX-ray8" in card
    assert "none of NIH's images" in card and "released by the NIH Clinical Center" not in card



def test_the_card_states_the_served_triage_and_its_guarantee(world):
    # Regressions: the section left out; the rule-out and rule-in rows swapped; the bound printed as the
    # calibration rate; exact said of a triage fitted on validation.
    submission = str(world["root"] / "loose" / "submission.csv")  # targets the few images can meet
    ensembling.run_ensemble(EnsembleConfig(world["predictions"], submission, bootstrap=0, fit_step=0.1,
                                           fit_on=[os.path.join(d, "val_predictions.csv") for d in world["dirs"]],
                                           triage_alpha=0.4, triage_beta=0.4, triage_delta=0.4))
    card, _ = _export(world, "loose", world["dirs"], ensemble=ensemble_file.ensemble_path(submission))
    served = ensemble_file.load_ensemble(ensemble_file.ensemble_path(submission)).triage  # from its source
    rows = _tables(card)["Triage"]
    fitted = [served[key]["threshold"] for key in ("rule_out", "rule_in")]
    assert None not in fitted and fitted[0] != fitted[1]  # the row check bites only on two thresholds
    for group, key, images in (("cleared", "rule_out", "abnormal"), ("prioritized", "rule_in", "normal")):
        entry, row = served[key], _row(rows, "group", group)
        assert row["threshold"] == f"{entry['threshold']:.4f}" and row["upper bound"] == f"{entry['bound']:.3f}"
        assert row["on calibration"] == f"{entry['empirical']:.3f} of {entry['used']} {images}"
        assert row["guarantee"].endswith(f"<= {entry['target']:g}, except with probability δ = {served['delta']:g}")
    assert f"Calibrated on {served['calibration']['images']} images (approximate: fitted on validation" in card


def test_a_single_models_card_takes_the_served_threshold_from_the_export_and_the_report_from_the_flag(world):
    # Regressions: the served threshold read from metrics.json (0.5) instead of export.json (0.3);
    # ECE before and after swapped.
    card, info = _export(world, "alone", world["dirs"][:1], threshold=0.3, report_dir=world["alone_report"])
    assert_every_number_from(card, _source_numbers(info, world["alone_report"]))
    metrics = _evaluation_rows_match(card, world["alone_report"], world["shards"])
    assert "Abnormal when P(abnormal) ≥ 0.3000: given to export.py (--threshold)." in card
    assert "at 0.5000, not at the served 0.3000" in card and list(metrics.values())[0]["threshold"] == 0.5
    entry, member = list(metrics.values())[0], info["members"][0]
    row = _row(_tables(card)["Calibration"], "member", f"`{member['name']}`")
    assert row["ECE before → after"] == f"{entry['ece_uncalibrated']:.3f} → {entry['ece']:.3f}"
    assert entry["ece_uncalibrated"] != entry["ece"]
    sidecar = _json(member["model_dir"], "val_predictions.json")
    assert row["temperature"] == f"{sidecar['temperature']:.3f}" and row["fitted by"] == "train.py, on validation"


def test_a_single_model_without_a_report_carries_its_runs_validation_figures(world):
    # Regression: the val AUROC of the last epoch instead of the one model.keras holds.
    run = world["dirs"][1]
    card, info = _export(world, "bare", [run])
    assert_every_number_from(card, _source_numbers(info, None))
    assert "No test report: none was given (`export.py --report_dir=FOLDER` gives one)" in card
    assert "## Operating points" not in card and "## Subgroups" not in card
    sidecar = _json(run, "val_predictions.json")
    with open(os.path.join(run, "metrics.jsonl")) as f:
        epochs = {r["epoch"]: r for r in map(json.loads, f)}
    assert len({f"{r['val_auroc']:.3f}" for r in epochs.values()}) > 1  # the epoch matters
    manifest = _json(world["shards"], "manifest.json")
    row = _row(_tables(card)["Validation, as training recorded it"], "member", "`tiny_test`")
    assert row == {"member": "`tiny_test`", "epoch": str(sidecar["epoch"]),
                   "val AUROC": f"{epochs[sidecar['epoch']]['val_auroc']:.3f}",
                   "val images": str(manifest["splits"]["val"]["records"]),
                   "run's temperature": f"{sidecar['temperature']:.3f}",
                   "trained under": f"`{_json(run, 'config.json')['precision']}`", "float32 gap": "none"}
    calibration = sidecar["calibration"]
    row = _row(_tables(card)["Calibration"], "member", "`tiny_test`")
    assert row["ECE before → after"] == f"{calibration['ece_before']:.3f} → {calibration['ece_after']:.3f}"
    assert row["measured on"] == "validation"


def test_a_report_dir_without_metrics_or_over_other_models_is_refused_and_nothing_is_written(world, tmp_path):
    # Regressions: drop the metrics.json check in report_folder (the card goes without a report);
    # drop the member comparison, or the temperature comparison, in _report_names.
    empty, target = tmp_path / "no_report", tmp_path / "served"
    empty.mkdir()
    done = subprocess.run([sys.executable, "export.py", f"--model_dir={world['dirs'][0]}", f"--report_dir={empty}",
                           f"--export_dir={target}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"export.py: --report_dir={empty}: no metrics.json there"), last
    cases = [(world["dirs"][:1], {"report_dir": world["both_report"]}),  # a report over both runs
             (world["dirs"], {"ensemble": world["ensemble"], "report_dir": world["both_report"]}),  # no blend
             (world["dirs"][1:], {"report_dir": world["alone_report"]})]  # the other run's
    for dirs, settings in cases:
        with pytest.raises(prediction.UserInputError, match="its report scores .*, not the exported"):
            exporter.run_export(ExportConfig(dirs, str(target), **settings))
    # The same runs blended without fitted temperatures: its report scored other probabilities.
    unfitted = ensembling.run_ensemble(EnsembleConfig(world["predictions"], str(tmp_path / "unfitted.csv"),
                                                      blend_weight=["0.5", "0.5"], bootstrap=0))
    with pytest.raises(prediction.UserInputError, match="at temperature 1, the export serves"):
        exporter.run_export(ExportConfig(world["dirs"], str(target), ensemble=world["ensemble"],
                                         report_dir=unfitted.report_dir))
    assert not target.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".partial")]


def test_an_ensemble_file_from_before_report_dir_still_exports_and_its_card_says_no_report(world, tmp_path):
    # Regression: load_ensemble requiring "report_dir" (or report_folder reading it with []).
    record = _json(world["ensemble"])
    assert record["report_dir"] == world["ensemble_report"]  # absolute, as ensemble.py wrote it
    del record["report_dir"]
    record["schema_version"] = 3
    old = tmp_path / "old.probabilities.json"
    old.write_text(json.dumps(record))
    card, info = _export(world, "old", world["dirs"], ensemble=str(old))
    assert "No test report: the ensemble file records no report folder" in card
    assert_every_number_from(card, _source_numbers(info, None))
    # A recorded report folder since moved away: the export goes on, and its card says so.
    record["report_dir"] = str(tmp_path / "moved")
    old.write_text(json.dumps(record))
    card, _ = _export(world, "moved", world["dirs"], ensemble=str(old))
    assert f"No test report: the ensemble file names `{tmp_path / 'moved'}`, which holds no metrics.json" in card
