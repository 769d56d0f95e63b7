"""The whole system end to end, each stage through its own command line: `make demo`.

    python demo.py                          # synthetic NIH-format data, a few minutes on a CPU
    python demo.py --nih_dir=/path/to/nih   # the same chain on a real NIH ChestX-ray14 download

Stages: (synthetic data) → build_tfrecords.py (train, val, calibration, test, by patient) → train.py
per backbone → predict.py on test and calibration → ensemble.py (blend fitted on validation, triage on
calibration) → submission.csv, report/ → explain.py (Grad-CAM into report/index.html) → export.py
(served/) → the test images' raw files through that SavedModel, compared with the submission. Each
command is printed before it runs: the demo doubles as a recipe. A rerun reuses finished work when
the plan (settings, generator version: demo_plan.json) is the same, else replaces its own outputs.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from contracts import cli
from contracts.atomic import write_json
from contracts.ensemble_file import blend_path, ensemble_path
from contracts.errors import UserInputError, check_output_folder
from contracts.explanation_folder import IN_REPORT
from contracts.export_folder import MODEL_CARD, OUTPUT_DECISION, OUTPUT_PROB
from contracts.labels import FINDINGS
from contracts.manifest import CALIBRATION_SPLIT
from contracts.output_names import PROB, TRIAGE, finding_prob
from contracts.settings import check, setting
from contracts.shared import IMAGE_SIZE, OUTPUT_DIR
from models import registry
from preprocess.config import CROP, MIN_IMAGE_SIDE, NUM_PATIENTS, SOURCE_SIZE
from training.config import BATCHNORM_MOMENTUM, EPOCHS, GLOBAL_BATCH_SIZE, LEARNING_RATE, WEIGHTS

REPO = os.path.dirname(os.path.abspath(__file__))
RUNS = "runs"  # the demo's outputs, one folder per data set
# BatchNorm's moving statistics at the default 0.99 lag far behind a few hundred steps from
# scratch, so inference-mode predictions collapse to one class; 0.9 keeps up.
SYNTHETIC_BATCHNORM_MOMENTUM = 0.9
SYNTHETIC_EPOCHS = 8
SYNTHETIC_CALIBRATION = 0.2  # ~110 abnormal of 400 patients: α = 0.05, δ = 0.1 bound with 2 misses
PLAN_FILE = "demo_plan.json"  # the plan the outputs beside it were made with
# What the demo writes into its output folder (never the user's --nih_dir).
OWNED = ("data", "shards", "models", "predictions", "report", "served", "submission.csv",
         "submission.probabilities.csv", "submission.probabilities.json", "submission.probabilities.npy")
RENAMED = {"data_dir": "--nih_dir (--data_dir now only names a shard folder)"}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """demo.py's settings (`make demo`); `make_plan` resolves them into what the stages run."""

    nih_dir: str | None = setting(None, (
        "A real NIH ChestX-ray14 download (Data_Entry CSV, BBox_List_2017.csv, split lists and "
        "images_0NN/images/). Default: generate a synthetic NIH-format dataset."))
    output_dir: str | None = OUTPUT_DIR.field(note=(
        "Here: everything the demo writes: data/, shards/, models/, predictions/, submission.csv, report/, "
        "served/. Default: runs/demo for the synthetic data, runs/demo-<--nih_dir's folder name> for real "
        "data."))
    num_patients: int = NUM_PATIENTS.field(400, lower=10)
    source_size: int = SOURCE_SIZE.field(512, lower=MIN_IMAGE_SIDE)  # smaller is skipped as not a film
    image_size: int | None = IMAGE_SIZE.field(note="Here: stored and trained (default: 64 synthetic, 224 "
                                                   "real).", lower=32)
    crop: str = CROP.field("none", note="Here: of the build; none by default, because only abnormal images "
                           "have boxes.")
    weights: str | None = WEIGHTS.field(None, note="Default: none synthetic, imagenet real.")
    epochs: int | None = EPOCHS.field(note="Default: 8 synthetic, the reference's real.")
    learning_rate: float | None = LEARNING_RATE.field(note=lambda: (
        "Here: of every backbone (default synthetic: "
        f"{registry.describe('from_scratch_learning_rate', '{:g}')}; real: the reference's)."))
    batchnorm_momentum: float | None = BATCHNORM_MOMENTUM.field(note="Default: 0.9 synthetic, the backbone's "
                                                                     "own real.")
    global_batch_size: int = GLOBAL_BATCH_SIZE.field(16, note="Here: train.py's.")
    backbones: tuple[str, ...] = setting(help="A backbone to train, one per backbone (default: all of them).",
                                         factory=lambda: tuple(registry.BACKBONES),
                                         choices=registry.BACKBONES.keys())
    # Resolved by make_plan, per data set:
    learning_rates: dict[str, float] = setting(help="backbone -> rate; absent: the reference's", factory=dict,
                                               flag=False)
    feature_layer: str | None = setting(None, "train.py's; None: the whole backbone", flag=False)
    early_stopping_patience: int | None = setting(None, "None: train.py's default", flag=False)

    def __post_init__(self):
        check(self)


def find_one(folder: str, patterns: list[str], what: str, required: bool = True) -> str | None:
    """Returns the first file under `folder` (recursively) matching one of `patterns`."""
    for pattern in patterns:
        found = sorted(glob.glob(os.path.join(folder, "**", pattern), recursive=True))
        if found:
            return found[0]
    if required:
        raise UserInputError(f"no {what} ({' or '.join(patterns)}) under {folder}; "
                        "put the NIH download's CSV files in that folder")
    return None


def run_stage(title: str, command: list[str]) -> float:
    """Runs one stage's command line, streaming its output; returns its wall time."""
    print(f"\n=== {title}\n$ {shlex.join(command)}", flush=True)
    start = time.time()
    done = subprocess.run(command, cwd=REPO)
    elapsed = time.time() - start
    if done.returncode != 0:
        raise UserInputError(f"stage '{title}' failed with exit status {done.returncode} (command above)")
    print(f"--- {title}: {elapsed:.0f} s", flush=True)
    return elapsed


def data_stage(plan: DemoConfig) -> tuple[list[str], list[float]]:
    """Returns the build command's data flags (and the time spent making synthetic data)."""
    py = sys.executable
    if plan.nih_dir is None:
        data = os.path.join(plan.output_dir, "data")
        times = []
        if not os.path.exists(os.path.join(data, "Data_Entry_2017_v2020.csv")):
            times.append(run_stage("synthetic NIH-format dataset", [
                py, "preprocess/synthetic.py", f"--output_dir={data}",
                f"--num_patients={plan.num_patients}", f"--source_size={plan.source_size}"]))
        entry, bbox, image_dir = (os.path.join(data, "Data_Entry_2017_v2020.csv"),
                                  os.path.join(data, "BBox_List_2017.csv"), data)
        return [f"--data_entry_csv={entry}", f"--bbox_csv={bbox}", f"--image_dir={image_dir}",
                "--split_by=grouped", "--val_fraction=0.15", "--test_fraction=0.2",
                f"--calibration_fraction={SYNTHETIC_CALIBRATION}"], times
    entry = find_one(plan.nih_dir, ["Data_Entry_2017_v2020.csv*", "Data_Entry_2017*.csv*"], "Data_Entry CSV")
    bbox = find_one(plan.nih_dir, ["BBox_List_2017.csv"], "bbox CSV", required=False)
    train_val = find_one(plan.nih_dir, ["train_val_list.txt"], "split list", required=False)
    test = find_one(plan.nih_dir, ["test_list.txt"], "split list", required=False)
    args = [f"--data_entry_csv={entry}", f"--image_dir={plan.nih_dir}", "--calibration_fraction=0.1"]
    args += [f"--bbox_csv={bbox}"] if bbox else []
    if train_val and test:
        args += ["--split_by=official", f"--train_val_list={train_val}", f"--test_list={test}"]
    else:
        args += ["--split_by=grouped", "--val_fraction=0.1", "--test_fraction=0.2"]
    return args, []


def plan_digest(plan: DemoConfig) -> str:
    """What the outputs depend on: every setting and, for synthetic data, the generator's version."""
    from preprocess.synthetic_data import GENERATOR_VERSION

    fields = {k: v for k, v in dataclasses.asdict(plan).items() if k != "output_dir"}
    fields["generator_version"] = GENERATOR_VERSION if plan.nih_dir is None else None
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def claim_output(plan: DemoConfig) -> None:
    """Keeps the outputs of the same plan for reuse; replaces those of another plan, in one line."""
    path = os.path.join(plan.output_dir, PLAN_FILE)
    digest = plan_digest(plan)
    try:
        with open(path) as f:
            recorded = json.load(f).get("digest")
    except (OSError, ValueError, AttributeError):
        recorded = None
    present = [name for name in OWNED if os.path.exists(os.path.join(plan.output_dir, name))]
    if present and recorded != digest:
        print(f"demo: {plan.output_dir} holds outputs of another plan (or generator version); replacing them",
              flush=True)
        for name in present:
            target = os.path.join(plan.output_dir, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    os.makedirs(plan.output_dir, exist_ok=True)
    write_json(path, {"digest": digest, "plan": dataclasses.asdict(plan)})


def run_demo(plan: DemoConfig) -> dict:
    """Runs every stage; returns {"seconds": {stage: s}, "metrics": the ensemble report}."""
    py = sys.executable
    out = plan.output_dir
    shards, models, preds = (os.path.join(out, d) for d in ("shards", "models", "predictions"))
    seconds: dict[str, float] = {}
    claim_output(plan)
    data_args, synth_times = data_stage(plan)
    if synth_times:
        seconds["synthetic data"] = synth_times[0]
    seconds["build"] = run_stage("build TFRecord shards", [
        py, "preprocess/build_tfrecords.py", *data_args, f"--output_dir={shards}",
        f"--image_size={plan.image_size}", f"--crop={plan.crop}"])
    for backbone in plan.backbones:
        command = [py, "train.py", f"--backbone={backbone}", f"--data_dir={shards}",
                   f"--model_dir={os.path.join(models, backbone)}", f"--weights={plan.weights}",
                   f"--global_batch_size={plan.global_batch_size}"]
        given = {"epochs": plan.epochs or None, "learning_rate": plan.learning_rates.get(backbone),
                 "batchnorm_momentum": plan.batchnorm_momentum, "feature_layer": plan.feature_layer,
                 "early_stopping_patience": plan.early_stopping_patience}
        command += [f"--{name}={value}" for name, value in given.items() if value is not None]
        seconds[f"train {backbone}"] = run_stage(f"train {backbone}", command)
    predicted = {}
    for split in ("test", CALIBRATION_SPLIT):
        seconds[f"predict {split}"] = run_stage(f"predict the {split} split", [
            py, "predict.py", *[f"--model_dir={os.path.join(models, b)}" for b in plan.backbones],
            f"--data_dir={shards}", f"--split={split}", f"--output={os.path.join(preds, split + '.csv')}",
            *(["--bootstrap=0"] if split == CALIBRATION_SPLIT else [])])  # its report is not the demo's
        predicted[split] = ([os.path.join(preds, f"{split}.{b}.csv") for b in plan.backbones]
                            if len(plan.backbones) > 1 else [os.path.join(preds, f"{split}.csv")])
    report_dir = os.path.join(out, "report")
    seconds["ensemble"] = run_stage("fit the ensemble on validation, its triage on calibration", [
        py, "ensemble.py", *[f"--predictions={path}" for path in predicted["test"]],
        *[f"--fit_on={os.path.join(models, b, 'val_predictions.csv')}" for b in plan.backbones],
        *[f"--calibrate_on={path}" for path in predicted[CALIBRATION_SPLIT]],
        f"--output={os.path.join(out, 'submission.csv')}", f"--report_dir={report_dir}"])
    # Where the models look, for the most confident hits and misses, into the report's page.
    explanations = os.path.join(report_dir, IN_REPORT)
    shutil.rmtree(explanations, ignore_errors=True)  # the demo owns its outputs
    ensemble = ensemble_path(os.path.join(out, "submission.csv"))
    blended = [f"--ensemble={ensemble}"] if len(plan.backbones) > 1 else []
    seconds["explain"] = run_stage("Grad-CAM of the test split into the report", [
        py, "explain.py", *[f"--model_dir={os.path.join(models, b)}" for b in plan.backbones], *blended,
        f"--data_dir={shards}", "--split=test", f"--output_dir={explanations}"])
    with open(os.path.join(report_dir, "metrics.json")) as f:
        metrics = json.load(f)
    export_dir = os.path.join(out, "served")
    # The demo owns its outputs: an export from an earlier run may hold other models.
    shutil.rmtree(export_dir, ignore_errors=True)
    seconds["export"] = run_stage("export the ensemble as one SavedModel (image bytes in)", [
        py, "export.py", *[f"--model_dir={os.path.join(models, b)}" for b in plan.backbones],
        f"--ensemble={ensemble}", f"--export_dir={export_dir}"])
    start = time.time()
    parity = serving_parity(export_dir, ensemble, plan.nih_dir or os.path.join(out, "data"))
    seconds["serve the test images"] = time.time() - start
    return {"seconds": seconds, "metrics": metrics, "serving": parity}


def serving_parity(export_dir: str, ensemble_file: str, image_dir: str) -> dict:
    """Serves the test split's original files through the export; returns {"images", "max_abs_diff",
    "mean_abs_diff", "decision_agreement", "findings_max_abs_diff" (None: no findings served),
    "same_triage" (images whose served triage group is the blend's)} against ensemble.py's blend."""
    import numpy as np
    import pandas as pd

    from serving.api import Classifier

    blended = pd.read_csv(blend_path(ensemble_file))
    files = {}
    for root, _, names in os.walk(image_dir, followlinks=True):
        for name in names:
            files.setdefault(name, os.path.join(root, name))
    missing = [i for i in blended["image_id"] if i not in files]
    if missing:
        raise UserInputError(f"{len(missing)} test image(s) not found under {image_dir}, e.g. {missing[0]}")
    print(f"\n=== serve {len(blended)} test images' original files through {export_dir}", flush=True)
    served = Classifier.load(export_dir).score_files([files[i] for i in blended["image_id"]])
    served = served.reindex(blended["image_id"])  # a file the graph refused scores NaN: no parity
    with open(ensemble_file) as f:
        threshold = json.load(f)["threshold"]
    gap = np.abs(served[OUTPUT_PROB].to_numpy() - blended[PROB].to_numpy())
    decisions = (blended[PROB].to_numpy() >= threshold).astype(int)
    columns = [finding_prob(f) for f in FINDINGS]
    findings = None
    if all(c in served.columns and c in blended.columns for c in columns):
        findings = float(np.abs(served[columns].to_numpy() - blended[columns].to_numpy()).max())
    same_triage = served[TRIAGE].to_numpy().astype(str) == blended[TRIAGE].to_numpy().astype(str)
    return {"images": int(len(gap)), "max_abs_diff": float(gap.max()), "mean_abs_diff": float(gap.mean()),
            "decision_agreement": float(np.mean(served[OUTPUT_DECISION].to_numpy() == decisions)),
            "findings_max_abs_diff": findings, "same_triage": int(same_triage.sum())}


def default_output_dir(nih_dir: str | None) -> str:
    """runs/demo for the synthetic data, runs/demo-<folder name> for a real NIH download."""
    if nih_dir is None:
        return os.path.join(RUNS, "demo")
    return os.path.join(RUNS, "demo-" + os.path.basename(os.path.normpath(os.path.abspath(nih_dir))))


def make_plan(values: DemoConfig) -> DemoConfig:
    """The stages' settings for the data set `values` names (synthetic or a real download)."""
    real = values.nih_dir is not None
    check_output_folder(values.output_dir or default_output_dir(values.nih_dir), "output_dir")
    if real and not os.path.isdir(values.nih_dir):
        raise UserInputError(f"nih_dir={values.nih_dir} is not a folder")
    weights = values.weights or ("imagenet" if real else "none")
    return dataclasses.replace(
        values,
        # Absolute: the stages run in the repository, wherever cxr-demo was started from.
        output_dir=os.path.abspath(values.output_dir or default_output_dir(values.nih_dir)),
        nih_dir=os.path.abspath(values.nih_dir) if real else None,
        # Real data: the reference's 224 px, ImageNet weights and epochs; synthetic: a 2-core CPU budget.
        image_size=values.image_size or (224 if real else 64),
        weights=weights,
        epochs=values.epochs if values.epochs else (None if real else SYNTHETIC_EPOCHS),
        # From scratch, the reference rates barely move the weights in a CPU budget; the registry's do.
        learning_rates=({b: values.learning_rate for b in values.backbones} if values.learning_rate
                        else {} if real else {b: registry.get_backbone(b).from_scratch_learning_rate
                                              for b in values.backbones}),
        batchnorm_momentum=(values.batchnorm_momentum if values.batchnorm_momentum is not None
                            else None if real else SYNTHETIC_BATCHNORM_MOMENTUM),
        # From random weights, the registry says where each backbone learns in a CPU budget.
        feature_layer=registry.FEATURE_LAYER_FROM_SCRATCH if weights == "none" else None,
        # The synthetic validation split is small and noisy (its AUROC moves by points between
        # epochs): a 3-epoch plateau would stop runs that still improve, so all epochs run.
        early_stopping_patience=None if real else SYNTHETIC_EPOCHS,
    )


def main(config: DemoConfig) -> None:
    start = time.time()
    chosen = make_plan(config)
    print(f"demo plan: {json.dumps(dataclasses.asdict(chosen))}", flush=True)
    result = run_demo(chosen)
    total = time.time() - start
    print("\n=== demo finished in {:.0f} s ({:.1f} min)".format(total, total / 60))
    for stage, s in result["seconds"].items():
        print(f"  {stage:<28} {s:6.0f} s")
    print(f"submission: {os.path.join(chosen.output_dir, 'submission.csv')}")
    print(f"report:     {os.path.join(chosen.output_dir, 'report', 'index.html')} (one static page: metrics, "
          "calibration, operating points, subgroups, explanations)")
    from evaluation.report import GAIN_FILE, gain_line

    print(results_table(result["metrics"]))
    print(findings_table(result["metrics"]))
    print(triage_table(result["metrics"]))
    gain_path = os.path.join(chosen.output_dir, "report", GAIN_FILE)
    if os.path.exists(gain_path):
        with open(gain_path) as f:
            print(gain_line(json.load(f)))
    serving = result["serving"]
    print(f"served:     {os.path.join(chosen.output_dir, 'served')} (SavedModel, image bytes in); on the "
          f"{serving['images']} test files |p_served - p_submission| max {serving['max_abs_diff']:.1e}, "
          f"mean {serving['mean_abs_diff']:.1e}; same decision on {serving['decision_agreement']:.1%}; same "
          f"triage on {serving['same_triage']} of {serving['images']}")
    if serving["findings_max_abs_diff"] is not None:
        print(f"            p_findings: |served - the blend's p_<finding>| max "
              f"{serving['findings_max_abs_diff']:.1e} over the 14 findings")
    # The ensemble file records its report folder, so the export's card carries the test figures.
    print(f"model card: {os.path.join(chosen.output_dir, 'served', MODEL_CARD)}")


def results_table(metrics: dict) -> str:
    """Each model's and the ensemble's test AUROC with its 95% interval, which resamples patients."""
    first = next(iter(metrics.values()), {})
    per_patient = first.get("images_per_patient") or 0
    unit = (f"by patient: {first.get('patients')} patients, {per_patient:.2f} images each"
            if first.get("bootstrap_by") else "by image")
    lines = [f"\ntest AUROC (bootstrap 95% interval, {unit}):"]
    for name, values in metrics.items():
        interval = values.get("auroc_ci95")
        shown = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "(no interval)"
        auroc = values.get("auroc")
        lines.append(f"  {name:<18} {'n/a' if auroc is None else f'{auroc:.3f}'} {shown}")
    return "\n".join(lines)


def findings_table(metrics: dict) -> str:
    """Per finding with positives in the test split, each entry's AUROC and 95% interval (by patient)."""
    from evaluation.findings import KEY

    tables = {name: {row["finding"]: row for row in values[KEY]["rows"]}
              for name, values in metrics.items() if "rows" in values.get(KEY, {})}
    if not tables:
        return "\nno per-finding table: the models have no findings head, or the test split no finding labels"
    first = next(iter(tables.values()))
    present = [finding for finding, row in first.items() if row["positives"]]
    lines = ["\ntest AUROC per finding (95% interval by patient; report/index.html has all 14 and the "
             "published figures):", f"  {'finding':<14} {'pos':>4}" + "".join(f"  {n:<22}" for n in tables)]
    for finding in present:
        cells = []
        for table in tables.values():
            row = table[finding]
            interval = row.get("auroc_ci95")
            shown = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
            cells.append("n/a (too few)" if row["auroc"] is None else f"{row['auroc']:.3f}{shown}")
        counts = f"  {finding:<14} {first[finding]['positives']:>4}"
        lines.append(counts + "".join(f"  {c:<22}" for c in cells))
    return "\n".join(lines)


def triage_table(metrics: dict) -> str:
    """The ensemble's triage on test: each group's share, the achieved miss and false-alarm rates with
    their 95% intervals by patient beside their targets (report/index.html has every model's)."""
    from evaluation.triage_report import KEY, rate_text

    section = metrics.get("ensemble", {}).get(KEY)
    if section is None:
        return "\nno triage table: the ensemble has no triage (see ensemble.py's output)"
    cal, s = section["calibration"], section
    groups = ", ".join(f"{k} {100 * (g['share'] or 0):.1f}% ({g['images']})" for k, g in s["groups"].items())
    return (f"\nensemble triage on test ({s['guarantee']} guarantee, δ={s['delta']:g}; calibrated on "
            f"{cal['images']} images, {cal['abnormal']} abnormal): {groups}\n"
            f"  miss rate (abnormal cleared / abnormal) {rate_text(s, 'miss_rate')}, target "
            f"α={s['alpha']:g}\n"
            f"  false-alarm rate (normal prioritized / normal) {rate_text(s, 'false_alarm_rate')}, target "
            f"β={s['beta']:g}\n  AURC {s['aurc']:.3f} (risk-coverage curve: report/index.html)")


def run() -> None:
    """Console entry point (setup.cfg) and `python demo.py`."""
    cli.run(DemoConfig, main, __doc__, renamed=RENAMED)


if __name__ == "__main__":
    run()
