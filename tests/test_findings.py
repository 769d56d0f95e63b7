"""The fourteen findings beside normal/abnormal: which records know them, the masked loss, and the
per-finding columns and AUROCs from a real NIH build to predict.py's report."""

import json
import os

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from contracts import records
from contracts.labels import FINDINGS
from contracts.manifest import ShardFolder
from contracts.output_names import finding_label, finding_prob, finding_uncalibrated
from evaluation import prediction
from evaluation.settings import PredictConfig
from pipeline import input_pipeline
from preprocess import builder
from preprocess.config import BuildConfig
from tests.shard_factory import encode_png, synthetic_pixels, write_shards
from training import step as step_lib
from training.config import TrainConfig
from training.loop import run_training

SIZE = 32


def _records(shards: str, split: str) -> list[dict]:
    folder = ShardFolder.open(shards)
    return [records.example_to_dict(r.numpy()) for path in folder.split(split).paths
            for r in tf.data.TFRecordDataset(path)]


def _train(data_dir: str, model_dir: str, **overrides):
    fields = dict(backbone="tiny_test", data_dir=data_dir, model_dir=model_dir, weights="none",
                  global_batch_size=8, epochs=1, steps_per_epoch=3, precision="float32", strategy="default")
    return run_training(TrainConfig(**{**fields, **overrides}))


def test_the_findings_loss_is_the_masked_positive_weighted_mean_cross_entropy():
    strategy = tf.distribute.get_strategy()
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4)(inputs)
    model = keras.Model(inputs, keras.layers.Concatenate()([
        keras.layers.Dense(2, activation="softmax")(hidden),
        keras.layers.Dense(len(FINDINGS), activation="sigmoid")(hidden)]))
    optimizer = step_lib.make_optimizer("sgd", 0.0, "float32")
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(3)
    images = rng.normal(size=(4, 3)).astype("float32")
    labels = np.array([0, 1, 1, 0], np.int32)
    findings = rng.integers(0, 2, size=(4, len(FINDINGS))).astype(np.int32)
    known = np.array([1, 0, 1, 1], np.int32)  # the second record's findings are unknown: no findings loss
    batch = {"image": images, "label": labels, "findings": findings, "findings_known": known}
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    pos_weights = tuple(float(w) for w in np.linspace(1.0, 10.0, len(FINDINGS)))
    step = step_lib.make_train_step(strategy, model, optimizer, global_batch_size=4,
                                    findings=step_lib.FindingsLoss(0.5, pos_weights))
    outputs = model(images).numpy().astype(np.float64)
    loss, _, _ = step(iterator)
    binary = -np.log(outputs[np.arange(4), labels])
    p, y = np.clip(outputs[:, 2:], 1e-7, 1 - 1e-7), findings
    per_finding = -(np.array(pos_weights) * y * np.log(p) + (1 - y) * np.log(1 - p))
    expected = np.sum(binary + 0.5 * per_finding.mean(axis=1) * known) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_a_binary_labels_csv_leaves_findings_unknown_and_finding_labels_keep_them(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(encode_png(synthetic_pixels(rng, 128, True)))
    (tmp_path / "binary.csv").write_text("image_id,label\na.png,1\nb.png,0\n")
    (tmp_path / "findings.csv").write_text("Image Index,Finding Labels\na.png,Mass|Effusion\n"
                                           "b.png,No Finding\n")
    found = {}
    for name in ("binary", "findings"):
        out = str(tmp_path / name)
        builder.build(BuildConfig(image_dir=str(images), split_by="unlabeled", output_dir=out, image_size=SIZE,
                                  labels_csv=str(tmp_path / f"{name}.csv"), workers=1))
        found[name] = {r["image_id"]: r for r in _records(out, "eval")}
    assert {i: (r["label"], r["findings_known"]) for i, r in found["binary"].items()} == {
        "a.png": (1, 0), "b.png": (0, 0), "c.png": (-1, 0)}
    mass_effusion = [int(f in ("Mass", "Effusion")) for f in FINDINGS]
    assert found["findings"]["a.png"]["findings"] == mass_effusion and found["findings"]["a.png"]["findings_known"]
    assert found["findings"]["b.png"]["findings"] == [0] * 14 and found["findings"]["b.png"]["findings_known"] == 1
    assert found["findings"]["c.png"]["findings_known"] == 0  # no row: unlabeled
    manifest = ShardFolder.open(str(tmp_path / "findings")).split("eval")
    assert manifest.findings_known == 2 and manifest.finding_positives == tuple(mass_effusion)


@pytest.mark.parametrize("config, split, known", [
    ({"data_entry_csv": "Data_Entry_2017.csv", "split_by": "grouped"}, "val", True),
    ({"data_entry_csv": "Data_Entry_2017.csv", "split": "official"}, "test", True),  # its pre-24 name
    ({"data_entry_csv": None, "split_by": "unlabeled"}, "eval", False),
    ({"labels_csv": "labels.csv", "split_by": "unlabeled"}, "eval", False),
])
def test_records_older_than_the_field_are_decided_by_their_manifest(tmp_path, config, split, known):
    shards = str(tmp_path / "shards")
    written = write_shards(shards, {split: 6}, image_size=SIZE, findings_known=True)[split]  # then dropped:
    manifest_path = os.path.join(shards, "manifest.json")
    manifest = json.loads(open(manifest_path).read())
    manifest.update(schema_version=4, config={**manifest["config"], **config})
    open(manifest_path, "w").write(json.dumps(manifest))
    for path in ShardFolder.open(shards).split(split).paths:  # rewrite each record as schema 4 did
        old = []
        for raw in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(raw.numpy())
            del example.features.feature[records.FINDINGS_KNOWN]
            old.append(example.SerializeToString())
        with tf.io.TFRecordWriter(path) as writer:
            for raw in old:
                writer.write(raw)
    folder = ShardFolder.open(shards)
    batch = next(iter(input_pipeline.make_eval_dataset(folder, split, 6)))
    assert batch["findings_known"].numpy().tolist() == [int(known)] * 6
    expected_positives = tuple(int(n) for n in np.sum([r["findings"] for r in written], axis=0))
    counted = input_pipeline.finding_counts(folder, split)
    assert counted == ((6, expected_positives) if known else (0, (0,) * 14))


def test_a_train_split_without_finding_labels_trains_the_binary_head_alone(tmp_path, caplog):
    shards = str(tmp_path / "shards")
    write_shards(shards, {"train": 24, "val": 8}, image_size=SIZE)  # findings unknown
    result = _train(shards, str(tmp_path / "run"))
    assert "has no finding labels" in caplog.text
    assert result["config"]["findings_weight"] == 0.0 and result["model"].output_shape[-1] == 2
    columns = pd.read_csv(tmp_path / "run" / "val_predictions.csv").columns
    assert not any(c.startswith(finding_prob("")) and c[2:] in FINDINGS for c in columns)


@pytest.fixture(scope="module")
def nih_run(nih_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("nih_findings")
    entry_csv = os.path.join(nih_sample, "Data_Entry_2017_v2020.csv.gz")
    shards, everything = str(root / "shards"), str(root / "all")
    builder.build(BuildConfig(data_entry_csv=entry_csv, image_dir=nih_sample, output_dir=shards, image_size=SIZE,
                              workers=2))
    builder.build(BuildConfig(data_entry_csv=entry_csv, image_dir=nih_sample, output_dir=everything,
                              image_size=SIZE, split_by="all", workers=2))
    result = _train(shards, str(root / "run"), epochs=1, steps_per_epoch=4)
    return {"root": root, "shards": shards, "all": everything, "result": result, "csv": entry_csv}


def test_a_real_nih_build_counts_and_trains_each_finding(nih_run):
    entry = pd.read_csv(nih_run["csv"]).set_index("Image Index")
    train = _records(nih_run["shards"], "train")
    assert all(r["findings_known"] == 1 for r in train)
    expected = [sum(f in entry.loc[r["image_id"], "Finding Labels"].split("|") for r in train) for f in FINDINGS]
    assert ShardFolder.open(nih_run["shards"]).split("train").finding_positives == tuple(expected)
    config = json.loads((nih_run["root"] / "run" / "config.json").read_text())
    weights = config["runtime"]["finding_pos_weights"]
    for finding, positives in zip(FINDINGS, expected):  # min(negatives / positives, cap), 1 without positives
        assert weights[finding] == pytest.approx(min(10.0, (len(train) - positives) / positives) if positives
                                                 else 1.0)
    assert nih_run["result"]["model"].output_shape[-1] == 16


def test_real_nih_predictions_carry_each_finding_and_its_auroc_equals_sklearn(nih_run, tmp_path):
    entry = pd.read_csv(nih_run["csv"]).set_index("Image Index")
    outputs = {}
    for split, data_dir in (("test", nih_run["shards"]), ("all", nih_run["all"])):
        output = str(tmp_path / f"{split}.csv")
        result = prediction.run_prediction(PredictConfig(
            model_dir=[str(nih_run["root"] / "run")], data_dir=data_dir, split=split, output=output,
            global_batch_size=16, bootstrap=50, progress=False))
        outputs[split] = (pd.read_csv(output, dtype={"image_id": str}), result.metrics["tiny_test"]["findings"])
    for split, (table, findings) in outputs.items():
        assert all(c in table.columns for f in FINDINGS for c in (finding_prob(f), finding_uncalibrated(f)))
        truth = np.array([[int(f in entry.loc[i, "Finding Labels"].split("|")) for f in FINDINGS]
                          for i in table["image_id"]])
        np.testing.assert_array_equal(table[[finding_label(f) for f in FINDINGS]].to_numpy(), truth)
        rows = {row["finding"]: row for row in findings["rows"]}
        scored = 0
        for k, finding in enumerate(FINDINGS):
            positives = int(truth[:, k].sum())
            assert rows[finding]["positives"] == positives
            if rows[finding]["auroc"] is not None:
                scored += 1
                assert rows[finding]["auroc"] == pytest.approx(
                    roc_auc_score(truth[:, k], table[finding_prob(finding)]), abs=1e-12)
            else:  # shown with its n only: too few positives or negatives
                assert min(positives, len(truth) - positives) < 10
        # The test split is small: every finding falls under the minimum; all 116 images give three.
        assert scored == (0 if split == "test" else 3)


def test_a_run_from_before_the_findings_head_is_not_resumed_with_one(tmp_path):
    from contracts.errors import UserInputError
    from training import config as config_lib

    config = TrainConfig(backbone="tiny_test", data_dir="shards", model_dir=str(tmp_path / "run"), image_size=SIZE)
    older = {key: value for key, value in config_lib.dataclasses.asdict(config).items() if key != "findings_weight"}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"format_version": 2, **older}))
    with pytest.raises(UserInputError, match="findings_weight=0.0, this one has 1.0"):
        config_lib.check_resumable(config)  # its checkpoints have no findings layer to restore into
    config_lib.check_resumable(config_lib.dataclasses.replace(config, findings_weight=0.0))


def test_mixed_precision_keeps_both_heads_in_float32():
    import models
    from models.heads import FINDINGS_LAYER, OUTPUT_LAYER
    from models.precision import with_policy

    classifier = models.build_classifier("tiny_test", SIZE, weights="none", findings=True)
    mixed = with_policy(classifier, "mixed_float16")
    policies = {layer.name: layer.dtype_policy.name for layer in mixed.layers}
    assert policies[OUTPUT_LAYER] == policies[FINDINGS_LAYER] == "float32"
    images = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    # Half-precision sigmoids move in steps of ~5e-4 near 1; float32 heads on float16 features do not.
    assert mixed(images).dtype == "float32"


def test_a_labels_csv_with_label_and_finding_labels_keeps_the_findings_and_refuses_disagreement(tmp_path):
    from contracts.labels_csv import read_labelled

    path = tmp_path / "labels.csv"
    path.write_text("image_id,label,Finding Labels\na.png,1,Mass\nb.png,0,No Finding\n")
    found = read_labelled(str(path))
    assert found["a.png"].findings == tuple(int(f == "Mass") for f in FINDINGS) and found["b.png"].label == 0
    path.write_text("image_id,label,Finding Labels\na.png,0,Mass\n")
    with pytest.raises(ValueError, match="line 2: label=0 but Finding Labels says 1"):
        read_labelled(str(path))


def test_a_prediction_file_with_part_of_a_findings_column_set_is_refused_in_one_line(tmp_path):
    from contracts.errors import UserInputError
    from contracts.prediction_files import FindingColumns, read_predictions, write_predictions

    probs = np.full((2, len(FINDINGS)), 0.5)
    path = str(tmp_path / "p.csv")
    write_predictions(path, ["a.png", "b.png"], np.array([0.2, 0.7]), np.array([0, 1]),
                      findings=FindingColumns(probs, probs, np.zeros((2, len(FINDINGS)), np.int64)))
    frame = pd.read_csv(path).drop(columns=[finding_label("Hernia")])
    frame.to_csv(path, index=False)
    with pytest.raises(UserInputError, match="has 13 of the 14 label_<finding> columns, missing label_Hernia"):
        read_predictions(path)


def test_the_model_card_lists_each_present_findings_test_auroc_from_the_report():
    from evaluation import findings
    from serving.model_card import _per_finding

    rng = np.random.default_rng(5)
    labels = np.zeros((120, len(FINDINGS)), np.int64)
    labels[:, FINDINGS.index("Mass")] = rng.random(120) < 0.3
    labels[:5, FINDINGS.index("Hernia")] = 1  # present, under the minimum
    probs = np.clip(labels * 0.3 + rng.random(labels.shape) * 0.7, 0, 1)
    from contracts.atomic import json_ready

    table = json_ready(findings.table(labels, probs, np.arange(120) // 2, 50))  # as metrics.json holds it
    card = "\n".join(_per_finding("ensemble", table))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in card.splitlines() if line.startswith("| ") and "finding" not in line}
    mass = FINDINGS.index("Mass")
    assert set(rows) == {"Mass", "Hernia"}  # the findings with positives in the split, no others
    assert rows["Mass"][:2] == [str(labels[:, mass].sum()), f"{roc_auc_score(labels[:, mass], probs[:, mass]):.3f}"]
    assert rows["Hernia"][:2] == ["5", "too few"]
