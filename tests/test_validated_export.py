"""Issue 27, item 5: the export is called validated only when its float32 graph is the one validated."""

import io
import json
import os
import shutil
import zipfile

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from contracts import ensemble_file, run_folder
from contracts.errors import UserInputError
from contracts.export_folder import MODEL_CARD, VALIDATION_INFO
from contracts.labels import FINDINGS
from contracts.output_names import finding_uncalibrated
from evaluation import ensemble_apply, ensembling, prediction
from evaluation.settings import EnsembleConfig, PredictConfig
from serving import exporter
from serving.config import ExportConfig
from tests.shard_factory import write_shards
from training.config import TrainConfig
from training.loop import run_training

SIZE = 32


def _config(data_dir, model_dir, policy):
    return TrainConfig(backbone="tiny_test", data_dir=data_dir, weights="none", global_batch_size=8, epochs=2,
                       precision=policy, strategy="default", seed=3, model_dir=model_dir, augment="off")


def _predict(model_dirs, data_dir, output, policy, **more):
    result = prediction.run_prediction(PredictConfig(
        model_dir=list(model_dirs), data_dir=data_dir, split="val", output=output, global_batch_size=8,
        strategy="default", precision=policy, bootstrap=0, progress=False, **more))
    return list(result.outputs.values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Shards (with findings) and two tiny runs: one trained in float32, one under mixed_bfloat16."""
    root = tmp_path_factory.mktemp("validated")
    data_dir = str(root / "shards")
    write_shards(data_dir, {"train": 32, "val": 24}, image_size=SIZE, findings_known=True)
    dirs = {}
    for policy in ("float32", "mixed_bfloat16"):
        dirs[policy] = str(root / policy)
        run_training(_config(data_dir, dirs[policy], policy))
    return {"root": root, "data_dir": data_dir, "dirs": dirs}


def _sidecar(model_dir):
    with open(os.path.join(model_dir, run_folder.VAL_SIDECAR)) as f:
        return json.load(f)


def _rewrite_sidecar(model_dir, change):
    sidecar = _sidecar(model_dir)
    change(sidecar)
    with open(os.path.join(model_dir, run_folder.VAL_SIDECAR), "w") as f:
        json.dump(sidecar, f)


def _export(tmp_path, model_dirs, name, ensemble=None, **more):
    export_dir = str(tmp_path / name)
    info = exporter.run_export(ExportConfig(model_dir=tuple(model_dirs), export_dir=export_dir, ensemble=ensemble,
                                            **more))
    with open(os.path.join(export_dir, MODEL_CARD)) as f:
        card = f.read()
    return info[VALIDATION_INFO], card, exporter.summary(info, export_dir)


def test_a_mixed_precision_run_validates_its_float32_model_and_records_the_gap(runs, tmp_path):
    """val_predictions.csv is model.keras's (float32) on validation, and the parity record equals what
    predict.py measures at the run's own policy: a second code path over the same images."""
    data_dir, model_dir = runs["data_dir"], runs["dirs"]["mixed_bfloat16"]
    validated = pd.read_csv(os.path.join(model_dir, run_folder.VAL_PREDICTIONS)).set_index("image_id")
    in_float32, in_bfloat16 = (
        pd.read_csv(_predict([model_dir], data_dir, str(tmp_path / f"{p}.csv"), p)[0]).set_index("image_id")
        for p in ("float32", "mixed_bfloat16"))
    ids = validated.index
    # Catches: val_predictions.csv written from the mixed policy's scores (they differ by the gap below).
    np.testing.assert_allclose(validated["p_uncalibrated"], in_float32.loc[ids, "p_uncalibrated"], atol=1e-6)
    sidecar = _sidecar(model_dir)
    assert sidecar[run_folder.PREDICTED_UNDER] == run_folder.MODEL_PRECISION
    parity = sidecar[run_folder.PRECISION_PARITY]
    gap = np.abs(in_bfloat16.loc[ids, "p_uncalibrated"] - in_float32.loc[ids, "p_uncalibrated"]).to_numpy()
    assert gap.max() > 1e-5  # the record is checked against a gap that exists (2e-4 in two runs)
    assert parity["trained_under"] == "mixed_bfloat16" and parity["images"] == len(ids) == 24
    np.testing.assert_allclose([parity["max_abs"], parity["median_abs"]], [gap.max(), np.median(gap)], atol=1e-6)
    # Catches: the served findings left out of the parity (p_findings is served too).
    columns = [finding_uncalibrated(f) for f in FINDINGS]
    findings_gap = np.abs(in_bfloat16.loc[ids, columns] - in_float32.loc[ids, columns]).to_numpy()
    np.testing.assert_allclose(parity["findings_max_abs"], findings_gap.max(), atol=1e-6)
    labels = validated["label"].to_numpy()
    np.testing.assert_allclose(parity["auroc_trained"], roc_auc_score(labels, in_bfloat16.loc[ids, "p_uncalibrated"]))
    np.testing.assert_allclose(parity["auroc_served"], roc_auc_score(labels, validated["p_uncalibrated"]))
    # A float32 run has nothing to compare: no record.
    assert _sidecar(runs["dirs"]["float32"])[run_folder.PRECISION_PARITY] is None
    # Catches: model.keras saved from the training model itself (its optimizer and slots inside).
    for run in runs["dirs"].values():
        with zipfile.ZipFile(os.path.join(run, run_folder.MODEL)) as saved:
            weights = h5py.File(io.BytesIO(saved.read("model.weights.h5")), "r")
            assert "layers" in weights and "optimizer" not in weights
        assert getattr(keras.models.load_model(os.path.join(run, run_folder.MODEL)), "optimizer", None) is None


def test_export_calls_validated_only_within_the_parity_limit(runs, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(runs["dirs"]["mixed_bfloat16"], model_dir)
    limit = run_folder.PARITY_LIMIT
    for gap, findings_gap, validated in ((limit, limit, True), (limit + 1e-4, 0.0, False),
                                         (0.0, limit + 1e-4, False), (None, 0.0, False)):
        def set_gap(sidecar, gap=gap, findings_gap=findings_gap):
            sidecar[run_folder.PRECISION_PARITY].update(max_abs=gap, findings_max_abs=findings_gap)
        _rewrite_sidecar(model_dir, set_gap)
        record, card, summary = _export(tmp_path, [model_dir], f"export_{gap}_{findings_gap}")
        # Catches: the limit not applied, applied as >= (the limit itself is within), not to the findings,
        # or a NaN gap (stored as null) taken as within (it crashed the export).
        assert record["validated"] is validated and record["limit"] == limit
        assert record["members"][0]["trained_under"] == "mixed_bfloat16"
        line = [s for s in summary.splitlines() if s.startswith(("validated: ", "not called validated: "))]
        assert len(line) == 1 and line[0] in card
        auroc = _sidecar(model_dir)[run_folder.PRECISION_PARITY]["auroc_served"]
        shown = "not recorded" if gap is None else f"{gap:.4f}"
        assert f"| `mixed_bfloat16` | {shown} (AUROC {auroc:.3f}) |" in card  # the card's validation row
        if validated:
            assert line[0].startswith("validated: ") and f"within {limit:.4f}" in line[0]
        else:
            assert line[0].startswith("not called validated: ") and f"max_abs {gap}" in line[0]
            assert f"train under {run_folder.MODEL_PRECISION}" in line[0]


def test_a_run_validated_under_its_mixed_policy_is_refused_until_train_py_reruns(runs, tmp_path):
    """A run from before the re-validation: its validation predictions are its mixed policy's. export.py
    does not call it validated; rerunning train.py with its flags re-validates it, and nothing else."""
    model_dir = str(tmp_path / "legacy")
    shutil.copytree(runs["dirs"]["mixed_bfloat16"], model_dir)
    legacy = pd.read_csv(_predict([model_dir], runs["data_dir"], str(tmp_path / "bf16.csv"), "mixed_bfloat16")[0])
    legacy.to_csv(os.path.join(model_dir, run_folder.VAL_PREDICTIONS), index=False)

    def forget(sidecar):
        del sidecar[run_folder.PREDICTED_UNDER], sidecar[run_folder.PRECISION_PARITY]
    _rewrite_sidecar(model_dir, forget)
    record, _, summary = _export(tmp_path, [model_dir], "before")
    # Catches: a missing record read as float32 (validated_under falling back to MODEL_PRECISION).
    assert not record["validated"] and "rerun train.py" in summary and record["members"][0]["validated_under"] == (
        "mixed_bfloat16")
    with open(os.path.join(model_dir, run_folder.METRICS)) as f:
        metrics = f.read()
    run_training(_config(runs["data_dir"], model_dir, "mixed_bfloat16"))
    with open(os.path.join(model_dir, run_folder.METRICS)) as f:
        assert f.read() == metrics  # no epoch trained again
    sidecar = _sidecar(model_dir)
    # Catches: a finished run taken as exported whatever its validation's policy (no re-validation).
    assert sidecar[run_folder.PREDICTED_UNDER] == run_folder.MODEL_PRECISION
    assert sidecar[run_folder.PRECISION_PARITY] == _sidecar(runs["dirs"]["mixed_bfloat16"])[run_folder.PRECISION_PARITY]
    again, first = (pd.read_csv(os.path.join(d, run_folder.VAL_PREDICTIONS)).set_index("image_id")["p_uncalibrated"]
                    for d in (model_dir, runs["dirs"]["mixed_bfloat16"]))
    np.testing.assert_allclose(again[first.index], first, atol=1e-6)
    assert np.abs(legacy.set_index("image_id")["p_uncalibrated"][first.index] - first).max() > 1e-5
    record, _, _ = _export(tmp_path, [model_dir], "after")
    assert record["validated"] is (sidecar[run_folder.PRECISION_PARITY]["max_abs"] <= run_folder.PARITY_LIMIT)


def test_an_ensemble_is_validated_only_on_float32_predictions(runs, tmp_path):
    data_dir, model_dir = runs["data_dir"], runs["dirs"]["float32"]
    dirs = [model_dir, str(tmp_path / "second")]
    shutil.copytree(model_dir, dirs[1])
    for policy in ("float32", "mixed_bfloat16"):
        files = _predict(dirs, data_dir, str(tmp_path / policy / "val.csv"), policy)
        submission = str(tmp_path / policy / "ens" / "submission.csv")
        ensembling.run_ensemble(EnsembleConfig(files, submission, blend_weight=[0.5, 0.5], bootstrap=0))
        members = ensemble_file.load_ensemble(ensemble_file.ensemble_path(submission)).members
        assert [m.precision for m in members] == [policy, policy]
        record, _, summary = _export(tmp_path, dirs, f"ens_{policy}", ensemble_file.ensemble_path(submission))
        # Catches: the members' predictions' policy not recorded, or not checked by the export.
        assert record["validated"] is (policy == "float32"), summary
        assert [m["predictions_under"] for m in record["members"]] == [policy, policy]
    # Temperatures fitted on float32 validation predictions are not applied to bfloat16 predictions.
    with pytest.raises(UserInputError, match="predicted under float32 but .* under mixed_bfloat16; predict both"):
        ensembling.run_ensemble(EnsembleConfig(
            _predict(dirs, data_dir, str(tmp_path / "again" / "val.csv"), "mixed_bfloat16"),
            str(tmp_path / "mixed" / "submission.csv"), fit_on=_predict(dirs, data_dir, str(tmp_path / "f" / "v.csv"),
                                                                       "float32"), bootstrap=0))


def test_an_ensemble_fitted_on_files_without_a_recorded_policy_is_not_validated(runs, tmp_path):
    # Catches: the ensemble file recording the --predictions files' policy alone, so weights and
    # temperatures fitted on a run's val_predictions.csv from before (no policy recorded) pass as float32's.
    data_dir, model_dir = runs["data_dir"], runs["dirs"]["float32"]
    dirs = [model_dir, str(tmp_path / "second")]
    shutil.copytree(model_dir, dirs[1])
    fit_on = []
    for i, run in enumerate(dirs):
        old = str(tmp_path / f"old{i}.csv")
        shutil.copy(os.path.join(run, run_folder.VAL_PREDICTIONS), old)
        with open(os.path.join(run, run_folder.VAL_SIDECAR)) as f:
            sidecar = json.load(f)
        del sidecar[run_folder.PREDICTED_UNDER]
        with open(old[:-4] + ".json", "w") as f:
            json.dump(sidecar, f)
        fit_on.append(old)
    files = _predict(dirs, data_dir, str(tmp_path / "test" / "val.csv"), "float32")
    submission = str(tmp_path / "ens" / "submission.csv")
    ensembling.run_ensemble(EnsembleConfig(files, submission, fit_on=fit_on, bootstrap=0))
    path = ensemble_file.ensemble_path(submission)
    assert [m.precision for m in ensemble_file.load_ensemble(path).members] == [None, None]
    record, _, summary = _export(tmp_path, dirs, "served", path)
    assert not record["validated"] and "--calibrate_on files record no precision" in summary


def test_predict_py_computes_in_the_served_policy_by_default():
    # Catches: predict.py back on "auto" (mixed_float16 on a GPU: numbers the export does not serve).
    assert PredictConfig(model_dir=("r",), data_dir="d", split="val", output="o.csv").precision == (
        run_folder.MODEL_PRECISION)


def test_a_run_resumes_only_under_the_policy_it_started_with(runs, tmp_path):
    # Catches: precision not resume_must_match (config.json then names the rerun's policy, and an older
    # mixed run's validation would read as float32's).
    model_dir = str(tmp_path / "run")
    shutil.copytree(runs["dirs"]["mixed_bfloat16"], model_dir)
    with pytest.raises(UserInputError, match="precision='mixed_bfloat16', this one has 'float32'"):
        run_training(_config(runs["data_dir"], model_dir, "float32"))


def test_what_the_validation_did_not_score_is_not_called_validated(runs, tmp_path):
    """A single run served with test-time views its triage was not fitted on; a card's report made
    under another policy; predict.py --ensemble under another policy than the ensemble's."""
    data_dir, model_dir = runs["data_dir"], runs["dirs"]["float32"]
    record, _, summary = _export(tmp_path, [model_dir], "one_view")
    assert record["validated"], summary
    # Catches: a single run exported with --tta=2 called validated.
    record, _, summary = _export(tmp_path, [model_dir], "two_views", tta=2)
    assert not record["validated"] and "served with 2 test-time views" in summary
    for policy in ("float32", "mixed_bfloat16"):
        report = str(tmp_path / f"report_{policy}")
        _predict([model_dir], data_dir, str(tmp_path / f"r_{policy}" / "val.csv"), policy, report_dir=report)
        record, _, summary = _export(tmp_path, [model_dir], f"with_{policy}", report_dir=report)
        # Catches: the card's report (Evaluation, Operating points, Subgroups) of another graph unsaid.
        assert record["validated"] is (policy == "float32"), summary
        assert ("scored tiny_test (mixed_bfloat16), not the float32 graph" in summary) is (policy != "float32")
    dirs = [model_dir, str(tmp_path / "second")]
    shutil.copytree(model_dir, dirs[1])
    files = _predict(dirs, data_dir, str(tmp_path / "members" / "val.csv"), "float32")
    submission = str(tmp_path / "ens" / "submission.csv")
    ensembling.run_ensemble(EnsembleConfig(files, submission, blend_weight=[0.5, 0.5], bootstrap=0))
    # Catches: predict.py --ensemble blending bfloat16 predictions by an ensemble fitted on float32 ones.
    members = _predict(dirs, data_dir, str(tmp_path / "blend" / "val.csv"), "mixed_bfloat16")
    with pytest.raises(UserInputError, match="mixed_bfloat16, but --ensemble=.* computed under float32"):
        ensemble_apply.apply_ensemble(ensemble_file.ensemble_path(submission), dirs, members,
                                      str(tmp_path / "blend" / "blend.csv"))
