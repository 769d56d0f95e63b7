"""explain.py: Grad-CAM of a model trained to find a lesion points at it (better than the centred
baseline), an ensemble's map is the weighted mean of its members', every backbone gives a map, and
bad input is one line with nothing written."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import ensemble_file, records
from contracts import explanation_folder as folder_lib
from contracts import manifest as manifest_lib
from contracts.boxes import FindingBox, stored_box
from contracts.errors import UserInputError
from contracts.labels import FINDINGS, NIH_FRAME
from contracts.prediction_files import write_predictions
from contracts.run_folder import RunFolder
from evaluation import explanation, gradcam, localization
from evaluation.feature_grid import feature_grid
from evaluation.settings import ExplainConfig
from models import build_classifier
from models.heads import FINDINGS_LAYER, NUM_CLASSES, OUTPUT_LAYER, POOL_LAYER
from models.saved import load_classifier
from tests.shard_factory import encode_png
from training.config import TrainConfig
from training.loop import run_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


def write_lesion_shards(out: str, splits: dict[str, int], seed: int = 0) -> None:
    """Writes shards (the project's record writer and manifest) of noisy flat images, every other one
    with a bright disc anywhere in the image and its box: the lesion is the only signal, and the
    centre of the image holds nothing in particular."""
    rng = np.random.default_rng(seed)
    os.makedirs(out)
    info = {}
    for split, count in splits.items():
        name = manifest_lib.shard_name(split, 0, 1)
        with tf.io.TFRecordWriter(os.path.join(out, name)) as writer:
            for i in range(count):
                pixels, boxes = rng.uniform(95, 105) + rng.normal(0, 10, (SIZE, SIZE)), []
                if i % 2 == 0:
                    radius = rng.uniform(0.06, 0.1) * SIZE
                    cx, cy = rng.uniform(radius + 1, SIZE - radius - 1, 2)
                    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
                    pixels[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] += rng.uniform(50, 80)
                    scale = NIH_FRAME / SIZE
                    boxes = [FindingBox("Mass", (cx - radius) * scale, (cy - radius) * scale, 2 * radius * scale,
                                        2 * radius * scale)]
                findings = [int(bool(boxes) and f == "Mass") for f in records.FINDINGS]
                writer.write(records.make_example(records.Record(
                    image=encode_png(np.clip(pixels, 0, 255).astype(np.uint8)), image_format="png", image_size=SIZE,
                    image_id=f"{split}_{i:04d}.png", label=int(bool(boxes)), findings=findings, patient_id=str(i),
                    box=boxes[0].xywh if boxes else records.NO_BOX, boxes=boxes,
                    findings_known=True)).SerializeToString())
        info[split] = {"records": count, "normal": count // 2, "abnormal": count - count // 2, "patients": count,
                       "shards": [name]}
    manifest_lib.write_manifest(out, {"config": {"image_size": SIZE, "image_format": "png", "crop": "none"},
                                      "splits": info, "patient_overlap": 0, "skipped": [], "warnings": []})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The lesion shards (the lesion's finding, Mass, known) and two tiny models trained on them
    (deterministic input order): the first with the findings head, the second the binary head alone."""
    root = tmp_path_factory.mktemp("explain")
    shards = str(root / "shards")
    write_lesion_shards(shards, {"train": 240, "val": 60, "test": 80})
    runs = []
    for seed, epochs, findings_weight in ((0, 6, 1.0), (1, 2, 0.0)):
        run = str(root / f"tiny{seed}")
        run_training(TrainConfig(backbone="tiny_test", data_dir=shards, weights="none", epochs=epochs,
                                 learning_rate=3e-3, batchnorm_momentum=0.9, early_stopping_patience=epochs,
                                 global_batch_size=16, seed=seed, deterministic=True, model_dir=run,
                                 findings_weight=findings_weight))
        runs.append(run)
    return {"root": root, "shards": shards, "runs": runs, "test_abnormal": 40}


def test_the_maps_of_a_model_trained_on_the_lesion_point_at_it_better_than_the_centre(world, tmp_path):
    out = str(tmp_path / "explained")
    result = explanation.run_explain(ExplainConfig(model_dir=[world["runs"][0]], data_dir=world["shards"],
                                                   split="test", output_dir=out, per_group=2, progress=False))
    with open(os.path.join(out, folder_lib.LOCALIZATION)) as f:
        scored = json.load(f)
    overall = scored["overall"]
    print(json.dumps({k: v for k, v in scored.items() if k != "per_image"}, indent=1))
    # Every boxed test image is scored, not only the gallery's: one box per abnormal image here.
    assert scored["images"] == scored["boxes"] == world["test_abnormal"]
    assert overall["pointing_game"] >= overall["pointing_game_baseline"] + 0.4
    assert overall["energy_in_boxes"] > 2 * overall["energy_in_boxes_baseline"]
    index = folder_lib.load_index(out)
    assert index["localization"] == scored and index["threshold"] == 0.5 and index["crop"] == "none"
    assert {e["group"] for e in index["images"]} <= {"tp", "fp", "fn"} and len(index["images"]) == len(result.images)
    for entry in index["images"]:
        heatmap = np.load(os.path.join(out, entry["heatmap"]))
        assert heatmap.shape == (SIZE, SIZE) and heatmap.max() <= 1.0 and heatmap.min() >= 0.0
        assert Image.open(os.path.join(out, entry["overlay"])).size[0] >= SIZE
        assert entry["label"] == {"tp": 1, "fn": 1, "fp": 0}[entry["group"]]
        assert (entry["p_abnormal"] >= 0.5) == (entry["group"] != "fn")
    tp = [e["p_abnormal"] for e in index["images"] if e["group"] == "tp"]
    assert tp == sorted(tp, reverse=True)


def test_explanations_in_a_report_folder_join_its_page(world, tmp_path):
    """explain.py --output_dir=<report>/explanations: the page shows the localization table and the
    gallery, and every image it references exists beside it."""
    from html.parser import HTMLParser

    from evaluation import html_report, report

    report_dir = tmp_path / "report"
    labels = np.array([0, 1, 0, 1])
    report.write_report(str(report_dir), [report.Scores("m", labels, np.array([0.2, 0.8, 0.4, 0.6]), 0.5)],
                        bootstrap=0)
    out = str(report_dir / html_report.EXPLANATIONS_DIR)
    result = explanation.run_explain(ExplainConfig(model_dir=[world["runs"][0]], data_dir=world["shards"],
                                                   split="test", output_dir=out, per_group=1, progress=False))
    html_report.write_index(str(report_dir))

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sources, self.text = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

        def handle_data(self, data):
            self.text.append(data)

    page = Images()
    page.feed((report_dir / html_report.INDEX_FILE).read_text())
    overlays = [s for s in page.sources if s.startswith(html_report.EXPLANATIONS_DIR + "/")]
    assert len(overlays) == len(result.images) > 0
    assert all((report_dir / s).is_file() for s in page.sources)
    assert "Localization against the expert boxes" in page.text and "all findings" in page.text
    # The first run has the findings head: each finding's own map has its table too.
    assert "Each finding's own map against its boxes" in page.text


# Where the test backbone's 16 x 16 cells sit over its 64 px input, worked out by hand: each of its
# two 3x3, stride-2 "same" convolutions pads only the bottom and right, so output cell o is centred
# on input pixel 2o + 1 (coordinate 2o + 1.5), and twice over cell k is centred at 4k + 3.5.
TINY_CENTRES = 4 * np.arange(SIZE // 4) + 3.5


def test_cropped_shards_are_not_scored_and_say_why(world, tmp_path, capsys):
    shards, out = str(tmp_path / "cropped"), str(tmp_path / "explained")
    shutil.copytree(world["shards"], shards)
    manifest = manifest_lib.ShardFolder.open(shards).manifest
    manifest["config"]["crop"] = "bbox"  # as --crop=bbox would have built it
    manifest_lib.write_manifest(shards, manifest)
    result = explanation.run_explain(ExplainConfig(model_dir=[world["runs"][0]], data_dir=shards,
                                                   split="test", output_dir=out, per_group=1, progress=False))
    assert result.localization == {"scored": False, "reason": explanation.NOT_SCORED_CROPPED}
    assert folder_lib.load_index(out)["localization"]["scored"] is False and result.images  # the gallery still is
    assert explanation.summary(result).splitlines()[-1] == f"localization: not scored: {explanation.NOT_SCORED_CROPPED}"


def test_shards_on_another_file_system_are_explained_as_local_ones(world, tmp_path):
    """ram:// stands for gs:// here: TensorFlow's in-memory file system, seen by this process only."""
    remote = "ram://explain-test/shards"
    tf.io.gfile.makedirs(remote)
    for name in os.listdir(world["shards"]):
        tf.io.gfile.copy(os.path.join(world["shards"], name), f"{remote}/{name}", overwrite=True)
    run = [world["runs"][0]]
    here = explanation.run_explain(ExplainConfig(model_dir=run, data_dir=world["shards"], split="test",
                                                 output_dir=str(tmp_path / "here"), per_group=1, progress=False))
    far = explanation.run_explain(ExplainConfig(model_dir=run, data_dir=remote, output_dir=str(tmp_path / "far"),
                                                per_group=1, progress=False))
    assert far.images == here.images and far.localization == here.localization and far.localization["images"]
    assert folder_lib.load_index(str(tmp_path / "far"))["source"] == {"data_dir": remote, "split": "test"}


def _independent_map(classifier: keras.Model, pixels: np.ndarray, finding: str | None = None) -> np.ndarray:
    """Grad-CAM by a second path: the layers called one by one, the head from a watched feature map,
    the margin from the softmax layer's kernel (with `finding`, that finding's logit from the findings
    layer's kernel column), then numpy, with linear interpolation between the cells' centres
    (`TINY_CENTRES`) and constant beyond them."""
    names = [layer.name for layer in classifier.layers]
    x = tf.constant(pixels)
    for layer in classifier.layers[1:names.index(POOL_LAYER)]:
        x = layer(x, training=False)
    features = tf.identity(x)
    with tf.GradientTape() as tape:
        tape.watch(features)
        h = features
        for layer in classifier.layers[names.index(POOL_LAYER):names.index(OUTPUT_LAYER)]:
            h = layer(h, training=False)
        if finding is None:
            kernel, bias = (v.numpy() for v in classifier.get_layer(OUTPUT_LAYER).weights)
            margin = tf.matmul(h, kernel[:, 1:] - kernel[:, :1]) + (bias[1] - bias[0])
        else:
            kernel, bias = (v.numpy() for v in classifier.get_layer(FINDINGS_LAYER).weights)
            k = FINDINGS.index(finding)
            margin = tf.matmul(h, kernel[:, k:k + 1]) + bias[k]
    grads, features = tape.gradient(margin, features).numpy(), features.numpy()
    maps = []
    for f, g in zip(features, grads):
        low = np.maximum((f * g.mean(axis=(0, 1))).sum(-1), 0).astype(np.float32)
        centres = np.arange(SIZE) + 0.5
        across = np.stack([np.interp(centres, TINY_CENTRES, row) for row in low])
        up = np.stack([np.interp(centres, TINY_CENTRES, col) for col in across.T], axis=1)
        maps.append(up / up.max() if up.max() > 0 else up)
    return np.stack(maps)


def test_cam_keeps_the_positive_part_of_the_weighted_channels_and_divides_by_the_maximum():
    rng = np.random.default_rng(2)
    features, gradients = rng.normal(size=(3, 5, 5, 4)), rng.normal(size=(3, 5, 5, 4))
    features[2] = -np.abs(features[2]) * np.sign(gradients[2].mean(axis=(0, 1)))  # no positive evidence
    got = gradcam.cam(tf.constant(features, tf.float32), tf.constant(gradients, tf.float32),
                      tf.eye(5), tf.eye(5)).numpy()
    weighted = np.einsum("bijk,bk->bij", features, gradients.mean(axis=(1, 2)))
    assert (weighted[:2] < 0).any()  # the ReLU has something to remove
    positive = np.maximum(weighted, 0)
    expected = positive / np.where(positive.max(axis=(1, 2), keepdims=True) > 0,
                                   positive.max(axis=(1, 2), keepdims=True), 1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not got[2].any()  # an image with no positive evidence has an empty map


def test_a_saturated_softmax_still_gets_a_map():
    # Softmax in float32 rounds P(abnormal) to exactly 1 beyond a margin of ~17 and P(normal) to 0
    # beyond ~104: the probability's gradient is then 0 and its map empty; the margin's is not.
    keras.utils.set_random_seed(3)
    classifier = build_classifier("tiny_test", 32, weights="none")
    head = classifier.get_layer("probabilities")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 0, bias * 0 + np.array([-200.0, 200.0])])
    head.set_weights([kernel + np.array([-1.0, 1.0]) * 1e-3, head.get_weights()[1]])
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    assert (classifier.predict(images, verbose=0)[:, 1] == 1.0).all()
    maps = gradcam.GradCam(classifier)(images)
    assert (maps.max(axis=(1, 2)) == 1.0).all()


def _ensemble_file(path: str, runs, weights, threshold: float, temperatures=None) -> str:
    write_predictions(path[: -len(".json")] + ".csv", np.array(["x"]), np.array([0.5]), None, sidecar={
        "backbone": "ensemble", "schema_version": ensemble_file.SCHEMA_VERSION, "threshold": threshold,
        "inputs": ensemble_file.member_records([f"m{i}" for i in range(len(runs))], [{"model_dir": r} for r in runs],
                                               ["a.csv", "b.csv"], weights, temperatures or [1.0] * len(runs))})
    return path


def _explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "explain.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_ensemble_map_is_the_weighted_mean_of_its_members_maps(world, tmp_path):
    runs, out = world["runs"], str(tmp_path / "explained")
    # Listed in the other order than the file's members: the file's order and weights rule.
    ensemble = _ensemble_file(str(tmp_path / "s.probabilities.json"), runs, [0.3, 0.7], threshold=0.35,
                              temperatures=[2.0, 0.5])
    explanation.run_explain(ExplainConfig(model_dir=[runs[1], runs[0]], data_dir=world["shards"],
                                          split="test", output_dir=out, ensemble=ensemble, per_group=1,
                                          progress=False))
    index = folder_lib.load_index(out)
    assert index["threshold"] == 0.35 and [m["weight"] for m in index["models"]] == [0.3, 0.7]
    image_ids = [e["image_id"] for e in index["images"]]
    records = {}
    for record in explanation.read_records(manifest_lib.ShardFolder.open(world["shards"]), "test", image_ids,
                                           with_boxes=False):
        records[record["image_id"]] = record
    pixels = np.repeat(np.stack([records[i]["gray"] for i in image_ids])[..., None], 3, -1).astype(np.float32)
    classifiers = [load_classifier(run) for run in runs]
    members = [_independent_map(classifier, pixels) for classifier in classifiers]
    expected = 0.3 * members[0] + 0.7 * members[1]
    # The probabilities in the one order: each member's temperature, then the weights.
    def calibrated(p, temperature):
        p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        return 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))

    blended = sum(w * calibrated(c.predict(pixels, verbose=0)[:, 1], t)
                  for w, t, c in zip((0.3, 0.7), (2.0, 0.5), classifiers))
    np.testing.assert_allclose([e["p_abnormal"] for e in index["images"]], blended, atol=1e-5)
    got = np.stack([np.load(os.path.join(out, e["heatmap"])) for e in index["images"]])
    assert np.abs(members[0] - members[1]).max() > 0.1  # the weights matter on these images
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_raw_files_are_built_as_predict_builds_them_and_explained(world, tmp_path):
    folder, out = tmp_path / "studies", str(tmp_path / "explained")
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (144, 128), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    done = _explain(f"--model_dir={world['runs'][0]}", f"--images={folder}", f"--output_dir={out}",
                    "--image_ids=c.png", "--image_ids=a.png")
    assert done.returncode == 0, done.stderr[-3000:]
    index = folder_lib.load_index(out)
    assert [(e["image_id"], e["group"], e["label"]) for e in index["images"]] == [("c.png", "asked", None),
                                                                               ("a.png", "asked", None)]
    assert index["source"]["images"] == str(folder) and index["source"]["skipped"] == []
    assert index["localization"]["scored"] is False and "localization: not scored" in done.stdout
    # The builder's own decoding and resize: the map is at the model's input size.
    assert np.load(os.path.join(out, index["images"][0]["heatmap"])).shape == (SIZE, SIZE)


@pytest.mark.parametrize("args, fragment", [
    (["--image_ids=not_an_image.png"], "--image_ids: not_an_image.png not in split 'test'"),
    (["--image_ids=a.png,b.png"], "give --image_ids once per image (--image_ids=A --image_ids=B)"),
    (["--ensemble={ensemble}"], "blends"),
    (["--model_dir={run1}"], "2 --model_dir given without --ensemble"),
])
def test_bad_input_is_one_line_exit_1_and_nothing_written(world, tmp_path, args, fragment):
    ensemble = _ensemble_file(str(tmp_path / "one.probabilities.json"), world["runs"][1:], [1.0], threshold=0.5)
    out = str(tmp_path / "explained")
    done = _explain(f"--model_dir={world['runs'][0]}", f"--data_dir={world['shards']}", f"--output_dir={out}",
                    *[a.format(ensemble=ensemble, run1=world["runs"][1]) for a in args])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    own = [line for line in done.stderr.splitlines() if line.startswith("explain.py: ")]
    assert len(own) == 1 and fragment in own[0], done.stderr[-2000:]
    assert not os.path.exists(out)


@pytest.mark.slow
@pytest.mark.parametrize("backbone, shallow_layer, floor", [
    # EfficientNet's squeeze-excitation blocks spread a faint gradient over the whole image. DenseNet's
    # layers (zero padding, valid convolutions, pooling, concatenation) are the others' kinds, and its
    # receptive field outgrows a small image after its stem: its grid is not probed again.
    ("efficientnet_b3", "block2b_add", 0.01), ("resnet50", "conv2_block3_out", 0.0), ("densenet121", None, None)])
def test_every_backbone_gives_a_map_whose_cells_sit_where_their_receptive_fields_are(backbone, shallow_layer, floor):
    keras.utils.set_random_seed(0)
    classifier = build_classifier(backbone, SIZE, weights="none")
    cam = gradcam.GradCam(classifier)
    assert cam.feature_map_shape() == tuple(classifier.get_layer(POOL_LAYER).input.shape[1:]) and cam.grid.from_layers
    maps = cam(np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32))
    assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1
    if shallow_layer is None:
        return
    # At a shallow layer, whose receptive field fits in the image, the grid read from the layers
    # puts a central cell at the centre of the input pixels its value depends on (its gradient's
    # support). The normalisation in front of the backbone is per pixel: probing the backbone's own
    # input is probing the image.
    net = next(layer for layer in classifier.layers if isinstance(layer, keras.Model))
    shallow = net.get_layer(shallow_layer).output
    grid = feature_grid(classifier, shallow)
    cell = int(shallow.shape[1]) // 2
    x = tf.constant(np.random.default_rng(1).normal(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = tf.reduce_sum(keras.Model(net.inputs, shallow)(x, training=False)[0, cell, cell])
    weight = np.abs(tape.gradient(value, x).numpy()[0]).sum(-1)
    centres = []
    for profile in (weight.sum(1), weight.sum(0)):
        support = np.flatnonzero(profile > floor * profile.max())
        assert 0 < support[0] and support[-1] < SIZE - 1  # the whole receptive field is inside the image
        centres.append((support[0] + support[-1] + 1) / 2)
    assert grid.from_layers and centres == [grid.offset[a] + grid.stride[a] * cell for a in (0, 1)]


def test_an_output_folder_inside_the_images_folder_is_refused(world, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(studies / "a.png")
    out = studies / "sub" / "explained"  # its overlays would be read as studies by the next run
    done = _explain(f"--model_dir={world['runs'][0]}", f"--images={studies / '*.png'}", f"--output_dir={out}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (own,) = [line for line in done.stderr.splitlines() if line.startswith("explain.py: ")]
    assert f"--output_dir={out} is inside --images={studies / '*.png'}" in own
    assert sorted(os.listdir(studies)) == ["a.png"]


def test_without_split_the_folder_decides_or_the_one_line_lists_its_splits(world, tmp_path):
    # world's shards have train, val and test: test is read (the message above names split 'test').
    shards, out = str(tmp_path / "shards"), str(tmp_path / "explained")
    write_lesion_shards(shards, {"val": 4, "eval": 4})
    done = _explain(f"--model_dir={world['runs'][0]}", f"--data_dir={shards}", f"--output_dir={out}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (own,) = [line for line in done.stderr.splitlines() if line.startswith("explain.py: ")]
    assert "has splits eval, val; pass --split" in own and not os.path.exists(out)


def _boxed_records(world, image_ids=()):
    shards = manifest_lib.ShardFolder.open(world["shards"])
    return list(explanation.read_records(shards, "test", list(image_ids), with_boxes=True))


def _pixels(found) -> np.ndarray:
    return np.repeat(np.stack([r["gray"] for r in found])[..., None], 3, -1).astype(np.float32)


def test_a_finding_map_is_the_grad_cam_of_that_findings_logit_and_is_scored_on_its_boxes(world, tmp_path):
    """--finding=Mass: the gallery is chosen by P(Mass) after the run's Mass temperature and its labels,
    its maps are Grad-CAM of the Mass logit (a second computation from the findings layer's kernel), and
    the localization's per-finding table scores the Mass map of every boxed image."""
    out, run = str(tmp_path / "explained"), world["runs"][0]
    result = explanation.run_explain(ExplainConfig(model_dir=[run], data_dir=world["shards"], split="test",
                                                   output_dir=out, per_group=2, finding="Mass", progress=False))
    index, k = folder_lib.load_index(out), FINDINGS.index("Mass")
    assert index["finding"] == "Mass" == result.finding and index["threshold"] == 0.5 and "Mass" in index["target"]
    classifier = load_classifier(run)
    records = {r["image_id"]: r for r in _boxed_records(world, [e["image_id"] for e in index["images"]])}
    shown = [records[e["image_id"]] for e in index["images"]]
    pixels = _pixels(shown)
    raw = np.clip(classifier.predict(pixels, verbose=0)[:, NUM_CLASSES + k].astype(np.float64), 1e-7, 1 - 1e-7)
    temperature = RunFolder.open(run).finding_temperatures()[k] or 1.0
    expected_p = 1 / (1 + np.exp(-np.log(raw / (1 - raw)) / temperature))
    np.testing.assert_allclose([e["p_Mass"] for e in index["images"]], expected_p, atol=1e-5)
    assert [e["label"] for e in index["images"]] == [int(bool(r["boxes"])) for r in shown]
    assert [(e["p_Mass"] >= 0.5) == (e["group"] != "fn") for e in index["images"]] == [True] * len(shown)
    got = np.stack([np.load(os.path.join(out, e["heatmap"])) for e in index["images"]])
    mass = _independent_map(classifier, pixels, "Mass")
    assert np.abs(mass - _independent_map(classifier, pixels)).max() > 0.05  # not the binary map
    np.testing.assert_allclose(got, mass, atol=2e-5)
    # Every boxed image's own Mass map, scored against its Mass boxes, beside the binary table.
    own = result.localization[localization.FINDING_MAPS]
    boxed = _boxed_records(world)
    maps = _independent_map(classifier, _pixels(boxed), "Mass")
    energies = {r["image_id"]: localization.energy_fraction(m, localization.box_mask(
        [stored_box(b.xywh, SIZE, None) for b in r["boxes"] if b.finding == "Mass"], SIZE)) for r, m in zip(boxed, maps)}
    assert {i["image_id"]: i["Mass"]["energy"] for i in own["per_image"]} == pytest.approx(energies, abs=1e-4)
    row = own["per_finding"]["Mass"]
    assert row["images"] == world["test_abnormal"] and row["pointing_game"] >= row["pointing_game_baseline"] + 0.3
    assert "each finding's own map" in explanation.summary(result)


def test_without_the_findings_head_the_localization_is_as_before_and_finding_is_refused(world, tmp_path):
    out, binary_only = str(tmp_path / "explained"), world["runs"][1]
    result = explanation.run_explain(ExplainConfig(model_dir=[binary_only], data_dir=world["shards"],
                                                   split="test", output_dir=out, per_group=1, progress=False))
    assert set(result.localization) == {"scored", "images", "boxes", "empty_maps", "baseline", "overall",
                                        "per_finding", "per_image"}
    assert len(explanation.summary(result).splitlines()) == 1 + 2 + 1 + len(result.localization["per_finding"])
    refused = str(tmp_path / "refused")
    done = _explain(f"--model_dir={binary_only}", f"--data_dir={world['shards']}", f"--output_dir={refused}",
                    "--finding=Mass")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (own,) = [line for line in done.stderr.splitlines() if line.startswith("explain.py: ")]
    assert f"{binary_only} has no findings head; retrain it with --findings_weight > 0" in own
    assert not os.path.exists(refused)
    with pytest.raises(UserInputError, match="has no findings head; retrain it with --findings_weight > 0"):
        gradcam.GradCam(build_classifier("tiny_test", 32, weights="none"), "Mass")


def test_finding_with_an_ensemble_file_without_per_finding_weights_or_an_unknown_name_is_refused(world, tmp_path):
    ensemble = _ensemble_file(str(tmp_path / "s.probabilities.json"), world["runs"], [0.5, 0.5], threshold=0.5)
    out = str(tmp_path / "explained")
    with pytest.raises(UserInputError, match=f"--ensemble={ensemble} has no per-finding weights"):
        explanation.run_explain(ExplainConfig(model_dir=world["runs"], data_dir=world["shards"], split="test",
                                              output_dir=out, ensemble=ensemble, finding="Mass", progress=False))
    done = _explain(f"--model_dir={world['runs'][0]}", f"--data_dir={world['shards']}", f"--output_dir={out}",
                    "--finding=Masses")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    own = [line for line in done.stderr.splitlines() if "Masses" in line]
    assert len(own) == 1 and all(name in own[0] for name in FINDINGS), done.stderr[-2000:]
    assert not os.path.exists(out)
