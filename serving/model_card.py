"""MODEL_CARD.md: an export's models, training data, scores (with the split they come from),
calibration, threshold, intended use and limits, from export.json's record, the run folders, the
shards' manifest and the report; a number nobody recorded reads NOT_RECORDED, never a guess."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from absl import logging

from contracts import ensemble_file, run_folder, storage
from contracts.errors import UserInputError
from contracts.export_folder import VALIDATION_INFO
from contracts.manifest import ShardFolder
from evaluation import findings
from evaluation.ensembling import ENSEMBLE
from evaluation.operating_points import OPERATING_POINTS_FILE
from evaluation.report import GAIN_FILE, METRICS_FILE
from evaluation.subgroups import SUBGROUPS_FILE
from preprocess.config import default_test_fraction
from preprocess.synthetic_data import LABEL_NOISE_FILE
from serving import card_triage, validation
from serving.card_format import NOT_RECORDED, code, fmt, fmt_interval, table
from serving.config import ExportConfig

CITATION = ('Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. "ChestX-ray8: Hospital-scale Chest X-ray '
            "Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax "
            'Diseases", CVPR 2017.')
RESEARCH_ONLY = "**Research only: not a medical device, not for diagnosis or any clinical decision.**"
INTENDED_USE = (
    f"{RESEARCH_ONLY} For research on "
    "triage (ranking chest films by how likely they hold a finding) and for comparing models on NIH "
    "ChestX-ray14; P(abnormal) is the output, the decision only a threshold on it.")
LIMITS = (
    "NIH's labels were text-mined from the radiology reports by natural-language processing (estimated "
    "over 90% accurate by the dataset's authors), not read from the images; against a radiologist panel "
    "they agree on normal/abnormal for about 73% of images, so every score above is against noisy labels.",
    "Frontal chest films only: trained on NIH's PA and AP views; lateral views, other body parts and "
    "other sites' films are outside what it saw.",
    "No clinical validation: the numbers come from one split of the shards named above, nothing more.")


def report_folder(config: ExportConfig, ensemble: ensemble_file.Ensemble | None) -> tuple[str | None, str]:
    """The report to read (None: none) and how it was found; a --report_dir must hold metrics.json."""
    if config.report_dir is not None:
        if not os.path.isfile(os.path.join(config.report_dir, METRICS_FILE)):
            raise UserInputError(f"--report_dir={config.report_dir}: no {METRICS_FILE} there; pass the "
                                 "folder predict.py or ensemble.py wrote its report into")
        return config.report_dir, "--report_dir"
    if ensemble is None:
        return None, "none was given (`export.py --report_dir=FOLDER` gives one)"
    if ensemble.report_dir is None:
        return None, "the ensemble file records no report folder (an older ensemble.py, or no labels)"
    if not os.path.isfile(os.path.join(ensemble.report_dir, METRICS_FILE)):
        logging.warning("the ensemble file names the report folder %s, which holds no %s: the model "
                        "card goes without it (pass --report_dir where it now is)", ensemble.report_dir,
                        METRICS_FILE)
        return None, f"the ensemble file names `{ensemble.report_dir}`, which holds no {METRICS_FILE}"
    return ensemble.report_dir, "the report folder the ensemble file records"


def _report_names(metrics: dict[str, Any], members: Sequence[dict[str, Any]], blended: bool,
                  where: str) -> list[str]:
    """Each member's entry name in metrics.json, matched by run folder (by name in older reports);
    refuses a report over other models (with the blend's entry iff `blended`), or other temperatures."""
    names = [n for n in metrics if n != ENSEMBLE]
    by_dir = {os.path.realpath(metrics[n]["model_dir"]): n for n in names if metrics[n].get("model_dir")}
    if len(by_dir) == len(names):
        found = [by_dir.get(os.path.realpath(m["model_dir"])) for m in members]
    else:
        found = [m["name"] if m["name"] in names else None for m in members]
    wrong = None in found or len(names) != len(members) or (ENSEMBLE in metrics) != blended
    if wrong:
        raise UserInputError(f"{where}: its report scores {', '.join(metrics)}, not the exported "
                             f"{', '.join(m['name'] for m in members)}; pass the report made over exactly "
                             "these models (predict.py for one, ensemble.py for the ensemble)")
    for member, name in zip(members, found):
        scored = metrics[name].get("temperature") or 1.0
        if not math.isclose(scored, member["temperature"], rel_tol=1e-6):
            raise UserInputError(f"{where}: its report scored {name} at temperature {scored:.4g}, the export "
                                 f"serves {member['temperature']:.4g}; pass the report made with these "
                                 "temperatures (of this ensemble file, or of the run as it is now)")
    return found


def _findings_line(served: dict[str, Any]) -> str:
    return f"Findings: {served['why']}." if served["output"] is None else (
        f"Findings: `{served['output']}`, one probability per NIH finding (after each finding's temperature, "
        "blended with its weights).")


def _model(info: dict[str, Any]) -> list[str]:
    def origin(weights: str | None) -> str:
        return {"imagenet": "ImageNet", "none": "none (random)"}.get(weights, code(weights))

    size = fmt(info["image_size"], "count")
    rows = [[code(m["name"]), code(m["backbone"]), origin(m["weights"]), code(m["precision"]), size,
             fmt(m["weight"], "weight"), fmt(m["temperature"], "temperature"), code(m["model_dir"])]
            for m in info["members"]]
    return ["## Model", "", "Input: a PNG or JPEG (`serving_default`) or float32 pixels (`pixels`), resized "
            f"to {size} px and never cropped. Output: P(abnormal) after each member's temperature (an "
            f"ensemble: their weighted blend). {_findings_line(info['findings'])}", "",
            *table(["member", "backbone", "initial weights", "precision", "image size (px)",
                     "weight in the blend", "temperature", "run folder"], rows)]


def _source(build: dict[str, Any]) -> tuple[str, bool | None]:
    csv = build.get("data_entry_csv")
    if build.get("split_by") == "unlabeled":
        return f"unlabeled images under {code(build.get('image_dir'))}", None
    if not csv:
        return NOT_RECORDED, None
    if not os.path.exists(csv):  # nothing left to tell synthetic data from NIH's by
        return f"{code(csv)}, no longer there (whether synthetic: {NOT_RECORDED})", None
    synthetic = os.path.exists(os.path.join(os.path.dirname(csv), LABEL_NOISE_FILE))
    kind = (f"synthetic NIH-format data (preprocess/synthetic.py; its {LABEL_NOISE_FILE} lies beside the CSV)"
            if synthetic else "NIH ChestX-ray14")
    return f"{kind}: {code(csv)}, images under {code(build.get('image_dir'))}", synthetic


def _split_rule(build: dict[str, Any]) -> str:
    rule, seed = build.get("split_by"), fmt(build.get("seed"), "count")
    val = fmt(build.get("val_fraction"), "share")
    if rule == "grouped":
        test = build.get("test_fraction")
        test = default_test_fraction(rule) if test is None else test
        return (f"grouped by patient, stratified by label: val fraction {val}, test fraction "
                f"{fmt(test, 'share')}, seed {seed}")
    if rule == "official":
        return (f"NIH's official lists (train_val_list.txt, test_list.txt); val fraction {val} of train_val "
                f"by patient, seed {seed}")
    return NOT_RECORDED if rule is None else f"{code(rule)}, seed {seed}"


def _dataset(synthetic: bool | None) -> str:
    if synthetic:
        return (f"Dataset: synthetic radiographs in NIH ChestX-ray14's layout, none of NIH's images "
                f"(the layout's source: {CITATION.rstrip('.')}).")
    return f"Dataset: NIH ChestX-ray14, released by the NIH Clinical Center. Cite: {CITATION}"


def _data(shards: ShardFolder) -> tuple[list[str], bool | None]:
    manifest, build = shards.manifest, shards.manifest.get("config", {})
    source, synthetic = _source(build)
    rows = []
    for name in shards.split_names:
        info = manifest["splits"][name]
        records, abnormal = info.get("records"), info.get("abnormal")
        prevalence = abnormal / records if records and abnormal is not None else None
        rows.append([code(name), fmt(records, "count"), fmt(info.get("normal"), "count"),
                     fmt(abnormal, "count"), fmt(prevalence),
                     fmt(info.get("patients"), "count")])
    lines = ["## Training data", "", f"- Shards: {code(shards.path)}", f"- Source: {source}",
             f"- Split: {_split_rule(build)}", f"- Crop: {code(shards.crop)}; stored at "
             f"{fmt(shards.image_size, 'count')} px",
             f"- Patients in more than one split: {fmt(manifest.get('patient_overlap'), 'count')}", "",
             *table(["split", "records", "normal", "abnormal", "prevalence", "patients"], rows),
             _dataset(synthetic), ""]
    return lines, synthetic


def _validation(members: Sequence[dict[str, Any]], runs: Sequence[run_folder.RunFolder]) -> list[str]:
    rows = []
    for member, run in zip(members, runs):
        epoch = run.sidecar.get("epoch")
        records = []
        try:
            with open(os.path.join(run.path, run_folder.METRICS)) as f:
                records = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            pass
        auroc = next((r.get("val_auroc") for r in records if r.get("epoch") == epoch), None)
        calibration = run.sidecar.get(run_folder.CALIBRATION) or {}
        parity, float32 = run.precision_parity, run.trained_under == run_folder.MODEL_PRECISION
        gap = ("none" if float32 else NOT_RECORDED) if parity is None else (
            f"{fmt(parity.get('max_abs'), 'threshold')} (AUROC {fmt(parity.get('auroc_served'))})")
        rows.append([code(member["name"]), fmt(epoch, "count"), fmt(auroc),
                     fmt(calibration.get("records"), "count"), fmt(run.temperature, "temperature"),
                     code(run.trained_under), gap])
    return ["### Validation, as training recorded it", "",
            "The epoch model.keras holds (best validation AUROC), from each run's metrics.jsonl and "
            "val_predictions.json; this split chose the epoch and the temperature, so it flatters the model. "
            f"A mixed-precision run's largest gap in validation P(abnormal) between its {code('float32')} "
            "model.keras (served, and its AUROC) and the policy that trained it: the last column.", "",
            *table(["member", "epoch", "val AUROC", "val images", "run's temperature", "trained under",
                    "float32 gap"], rows)]


def _load_report(report_dir: str | None, how: str, members: Sequence[dict[str, Any]],
                 blended: bool) -> dict[str, Any] | None:
    if report_dir is None:
        return None
    where = (f"--report_dir={report_dir}" if how == "--report_dir" else
             f"the report folder {report_dir} that --ensemble records")
    metrics = storage.read_json_or_none(os.path.join(report_dir, METRICS_FILE))
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()) or not metrics:
        raise UserInputError(f"{where}: {METRICS_FILE} there is not a report's (model -> metrics); pass the "
                             "folder predict.py or ensemble.py wrote")
    names = _report_names(metrics, members, blended, where)
    served = ENSEMBLE if blended else names[0]
    sections = {key: (storage.read_json_or_none(os.path.join(report_dir, file)) or {}) for key, file in (
        ("points", OPERATING_POINTS_FILE), ("groups", SUBGROUPS_FILE), ("gain", GAIN_FILE))}
    return {"dir": os.path.abspath(report_dir), "how": how, "metrics": metrics, "names": names,
            "served": served, **sections}


def _evaluation(report: dict[str, Any], threshold: float) -> list[str]:
    metrics, head = report["metrics"], report["metrics"][report["served"]]
    split = head.get("split")
    scored = (f"split {code(split)} of {code(head.get('data_dir'))}" if split else
              f"a split that metrics.json does not name ({NOT_RECORDED}: a report from before it did)")
    unit = {"patient": "patients"}.get(head.get("bootstrap_by"), f"units ({NOT_RECORDED})")
    lines = ["## Evaluation", "", f"From {report['how']}: {code(report['dir'])}. Scored on {scored}: "
             f"{fmt(head.get('records'), 'count')} images of {fmt(head.get('patients'), 'count')} patients; "
             f"prevalence {fmt(head.get('prevalence'))}, so always answering the majority class scores "
             f"accuracy {fmt(head.get('majority_baseline_accuracy'))}. Intervals: 95% percentile bootstrap, "
             f"{fmt(head.get('bootstrap_resamples'), 'count')} resamples of the {unit}, each drawn with all "
             "their images.", ""]
    rows = [[code(name), code(e.get("split")), fmt(e.get("records"), "count"), fmt(e.get("auroc")),
             fmt_interval(e, "auroc_ci95"), fmt(e.get("accuracy")), fmt(e.get("sensitivity")),
             fmt(e.get("specificity")), fmt(e.get("threshold"), "threshold")] for name, e in metrics.items()]
    lines += table(["model", "split", "images", "AUROC", "AUROC 95% CI", "accuracy", "sensitivity",
                     "specificity", "at threshold"], rows)
    gain = report["gain"]
    if gain:
        lines += [f"The ensemble against the member best on validation ({code(gain.get('best_single'))}): "
                  f"AUROC {fmt(gain.get('ensemble_auroc'))} vs {fmt(gain.get('best_single_auroc'))}, "
                  f"difference {fmt(gain.get('difference'), 'signed')}, paired 95% interval "
                  f"{fmt_interval(gain, 'ci95')}.", ""]
    if head.get("threshold") is not None and not math.isclose(head["threshold"], threshold):
        lines += ["The report measured accuracy, sensitivity and specificity at "
                  f"{fmt(head['threshold'], 'threshold')}, not at the served {fmt(threshold, 'threshold')}: "
                  "see the operating points for other thresholds.", ""]
    return lines + _per_finding(report["served"], head.get(findings.KEY))


def _calibration(info: dict[str, Any], runs: Sequence[run_folder.RunFolder], report: dict[str, Any] | None,
                 ensemble: ensemble_file.Ensemble | None) -> list[str]:
    rows = []
    for index, (member, run) in enumerate(zip(info["members"], runs)):
        if ensemble is None:
            fitted = "train.py, on validation" if run.temperature else "none fitted"
        else:
            files = (ensemble.fit or {}).get("files") or []
            fitted = f"ensemble.py --fit_on {code(files[index])}" if index < len(files) else "none fitted"
        if report is not None:
            entry = report["metrics"][report["names"][index]]
            ece, on = (entry.get("ece_uncalibrated"), entry.get("ece")), "the report's split"
        elif run.temperature and math.isclose(run.temperature, member["temperature"], rel_tol=1e-6):
            calibration = run.sidecar.get(run_folder.CALIBRATION) or {}
            ece, on = (calibration.get("ece_before"), calibration.get("ece_after")), "validation"
        else:
            ece, on = (None, None), NOT_RECORDED
        rows.append([code(member["name"]), fmt(member["temperature"], "temperature"), fitted,
                     f"{fmt(ece[0])} → {fmt(ece[1])}", on])
    lines = ["## Calibration", "", "Each member's softmax output goes through its temperature (logit / T) "
             "before the blend and the threshold; ECE is the expected calibration error (lower is better).",
             "",
             *table(["member", "temperature", "fitted by", "ECE before → after", "measured on"], rows)]
    if report is not None and ensemble is not None:
        lines += [f"The blend's ECE on the report's split: {fmt(report['metrics'][ENSEMBLE].get('ece'))}.",
                  ""]
    return lines


def _threshold(info: dict[str, Any], config: ExportConfig,
               ensemble: ensemble_file.Ensemble | None) -> list[str]:
    if ensemble is not None:
        fit = ensemble.fit or {}
        how = (f"chosen on {fmt(fit.get('records'), 'count')} validation records by "
               f"{code(fit.get('criterion'))} (ensemble.py --fit_on)" if fit.get("fitted_threshold") else
               "set when ensemble.py ran (its --threshold or its default), not fitted")
        how += f"; read from {code(os.path.abspath(config.ensemble))}"
    else:
        how = ("given to export.py (--threshold)" if config.threshold is not None else
               "the single-model default (the larger of the two softmax outputs)")
    return ["## Operating threshold", "",
            f"Abnormal when P(abnormal) ≥ {fmt(info['threshold'], 'threshold')}: {how}.", ""]


def _points_and_groups(report: dict[str, Any]) -> list[str]:
    served, split = report["served"], report["metrics"][report["served"]].get("split") or "test"
    lines = []
    points = report["points"].get(served) or []
    if points:
        rows = [[f"{r['metric']} ≥ {fmt(r.get('value'))}" if "metric" in r else code(r.get("target")),
                 fmt(r.get("threshold"), "threshold"), fmt(r.get("validation_sensitivity")),
                 fmt(r.get("validation_specificity")),
                 fmt(r.get("test_sensitivity")), fmt_interval(r, "test_sensitivity_ci95"),
                 fmt(r.get("test_specificity")), fmt_interval(r, "test_specificity_ci95")] for r in points]
        lines += ["## Operating points", "", f"Of {code(served)}: thresholds chosen on validation for a "
                  f"target, then measured on {code(split)} with 95% intervals.", "",
                  *table(["target", "threshold", "val sensitivity", "val specificity",
                           f"{split} sensitivity", "sensitivity 95% CI", f"{split} specificity",
                           "specificity 95% CI"], rows)]
    groups = report["groups"].get(served) or []
    if groups:
        rows = [[code(g.get("attribute")), code(g.get("group")), fmt(g.get("n"), "count"),
                 fmt(g.get("patients"), "count"), fmt(g.get("prevalence")),
                 "one class" if g.get("prevalence") in (0, 1) else fmt(g.get("auroc")),
                 fmt_interval(g, "auroc_ci95")] for g in groups]
        lines += ["## Subgroups", "", f"Of {code(served)} on {code(split)}; a small group's interval is "
                  "wide, and differences inside overlapping intervals are not supported by the data.", "",
                  *table(["attribute", "group", "n", "patients", "prevalence", "AUROC", "AUROC 95% CI"],
                          rows)]
    return lines


def _limits(info: dict[str, Any], synthetic: bool | None, shards: ShardFolder | None) -> list[str]:
    limits = list(LIMITS)
    limits += [f"{code(m['name'])} was trained on --crop=bbox shards (cropped to NIH's boxes, which only "
               "abnormal images have), but served images arrive uncropped: expect its scores to shift."
               for m in info["members"] if m.get("train_crop") == "bbox"]
    if synthetic:
        limits.append("Trained and scored on synthetic images: the numbers show that the pipeline works, "
                      "not how a model reads radiographs.")
    elif synthetic is None:
        limits.append(f"Whether the training images were synthetic: {NOT_RECORDED}.")
    if shards is not None and shards.manifest.get("patient_overlap"):
        limits.append("Some patients are in more than one split: the held-out numbers are optimistic.")
    return ["## Intended use", "", INTENDED_USE, "", "## Known limits", "", *[f"- {t}" for t in limits], ""]


def _shards(runs: Sequence[run_folder.RunFolder]) -> tuple[ShardFolder | None, list[str]]:
    folders = sorted({str(run.config.get("data_dir")) for run in runs})
    try:
        return ShardFolder.open(folders[0]), [] if len(folders) == 1 else [
            f"The members trained on different shard folders ({', '.join(map(code, folders))}); the first "
            "is described.", ""]
    except UserInputError:
        return None, ["## Training data", "", f"The shards {code(folders[0])}: {NOT_RECORDED} (their "
                      "manifest.json is not there any more).", ""]


def _per_finding(served: str, found: dict[str, Any] | None) -> list[str]:
    """The served model's test AUROC per finding present in the split (p_findings' columns)."""
    if not found or "rows" not in found:
        return ["### Per finding", "", f"{found['absent']}.", ""] if found else []
    rows = [[r["finding"], fmt(r["positives"], "count"), "too few" if r["auroc"] is None else fmt(r["auroc"]),
             fmt_interval(r, "auroc_ci95")] for r in found["rows"] if r["positives"]]
    return ["### Per finding", "", f"Of {code(served)}, each finding with positives in the split (too few: "
            f"under {fmt(found['min_positives'], 'count')} positives or negatives); mean AUROC over those "
            f"with one {fmt(found['mean_auroc'])} {fmt_interval(found, 'mean_auroc_ci95')}.", "",
            *table(["finding", "positives", "AUROC", "AUROC 95% CI"], rows)]


def render(info: dict[str, Any], config: ExportConfig, found: tuple[str | None, str] | None = None) -> str:
    """MODEL_CARD.md's text for the export `config` whose export.json record is `info`, over the report
    `found` (`report_folder`'s answer; None: found here).

    Raises UserInputError: a --report_dir without metrics.json, or a report over other models or
    temperatures than the exported ones.
    """
    ensemble = ensemble_file.load_ensemble(config.ensemble) if config.ensemble else None
    runs = [run_folder.RunFolder.open(m["model_dir"]) for m in info["members"]]
    report_dir, how = found or report_folder(config, ensemble)
    report = _load_report(report_dir, how, info["members"], ensemble is not None)
    shards, lines = _shards(runs)
    synthetic = None
    if shards is not None:
        data, synthetic = _data(shards)
        lines = data + lines
    names = ", ".join(code(b) for b in info["backbones"])
    title = f"ensemble of {names}" if len(info["members"]) > 1 else names
    sources = ("the run folders and the shards' manifest" if report is None else
               "the run folders, the shards' manifest and the report")
    head = [f"# Model card: {title}", "", f"Written by export.py at {code(info['created'])} beside "
            f"export.json (TensorFlow {code(info['tensorflow'])}), from {sources}. A number that was not "
            f'recorded reads "{NOT_RECORDED}".', "", RESEARCH_ONLY, "",
            validation.line(info[VALIDATION_INFO]) if VALIDATION_INFO in info else NOT_RECORDED, ""]
    evaluation = (_evaluation(report, info["threshold"]) if report is not None else
                  ["## Evaluation", "", f"No test report: {how}. The figures below are validation's, which "
                   "chose the epoch and the temperature.", ""])
    body = [*_model(info), *lines, *evaluation, *_validation(info["members"], runs),
            *_calibration(info, runs, report, ensemble), *_threshold(info, config, ensemble),
            *card_triage.section(info), *(_points_and_groups(report) if report is not None else []),
            *_limits(info, synthetic, shards)]
    return "\n".join(head + body).rstrip() + "\n"
