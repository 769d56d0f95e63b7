"""The uint8 transfer: the front computes exactly what the float path computes, in prediction and in a
training step; "auto" means uint8 with a GPU and the measured choice without one; the saved model
still takes float32 RGB."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from contracts import run_folder
from contracts.prediction_files import read_predictions
from evaluation import prediction
from evaluation.settings import PredictConfig
from models import distribute
from models.front import GrayToRGB
from pipeline import input_pipeline
from tests.shard_factory import write_shards
from training import loop
from training import step as step_lib
from training.config import TrainConfig

SIZE = 32
FAKE_GPU = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("shards"))
    written = write_shards(path, {"train": 16, "val": 11, "eval": 11}, image_size=SIZE, shards_per_split=2)
    return path, written


def _with_a_gpu(monkeypatch, visible: bool = True) -> None:
    """TensorFlow's device query answers as if a GPU were there (or as if none were)."""
    real = tf.config.list_physical_devices

    def listed(device_type=None):
        if device_type == "GPU":
            return [FAKE_GPU] if visible else []
        return real(device_type)

    monkeypatch.setattr(tf.config, "list_physical_devices", listed)


def test_auto_is_uint8_with_a_gpu_and_the_measured_choice_without(monkeypatch):
    _with_a_gpu(monkeypatch)
    assert distribute.resolve_transfer("auto") == "uint8"
    assert distribute.resolve_transfer("float32") == "float32"
    _with_a_gpu(monkeypatch, visible=False)
    # On this CPU the uint8 path cost more host CPU per image (docs/gpus.md, "On this CPU, as they stand").
    assert distribute.resolve_transfer("auto") == "float32"
    assert distribute.resolve_transfer("uint8") == "uint8"
    with pytest.raises(ValueError, match="auto, uint8, float32"):
        distribute.resolve_transfer("uint16")


def test_uint8_prediction_equals_the_float_path_and_numpy_pixels(shards, tmp_path):
    data_dir, written = shards
    model_dir = str(tmp_path / "run")
    model = models.build_model("tiny_test", SIZE, weights="none")
    os.makedirs(model_dir)
    model.save(os.path.join(model_dir, run_folder.MODEL))
    with open(os.path.join(model_dir, run_folder.CONFIG), "w") as f:
        json.dump({"backbone": "tiny_test", "image_size": SIZE, "data_dir": data_dir}, f)
    outputs = {}
    for transfer in ("uint8", "float32"):
        path = str(tmp_path / f"{transfer}.csv")
        prediction.run_prediction(PredictConfig(model_dir=[model_dir], data_dir=data_dir, split="eval",
                                                output=path, global_batch_size=4, transfer=transfer,
                                                bootstrap=0, progress=False))
        assert json.loads((tmp_path / f"{transfer}.json").read_text())["transfer"] == transfer
        outputs[transfer] = read_predictions(path)
    # Independently: the written gray pixels as float32 RGB, straight into the model.
    rows = sorted(written["eval"], key=lambda r: r["image_id"])
    rgb = np.repeat(np.stack([r["pixels"] for r in rows])[..., None], 3, axis=-1).astype(np.float32)
    expected = model.predict(rgb, verbose=0)[:, 1]
    assert list(outputs["uint8"].ids) == [r["image_id"] for r in rows]
    np.testing.assert_allclose(outputs["uint8"].probs, outputs["float32"].probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["uint8"].probs, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_uint8_training_step_equals_the_float_step(jit_compile):
    # Augmentation on: under XLA the step runs the front, then the augmentation, then the compiled body.
    strategy = tf.distribute.get_strategy()
    gray = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 1), dtype=np.uint8)
    labels = tf.constant([0, 1, 1, 0], tf.int32)
    results = {}
    for uint8 in (True, False):
        keras.utils.set_random_seed(1)
        model = models.build_model("tiny_test", SIZE, weights="none", augment=True, seed=3)
        optimizer = step_lib.make_optimizer("adam", 1e-2, "float32")
        optimizer.build(model.trainable_variables)
        images = tf.constant(gray) if uint8 else tf.constant(np.repeat(gray, 3, axis=-1).astype(np.float32))
        batches = tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat()
        step = step_lib.make_train_step(strategy, model, optimizer, global_batch_size=4,
                                        jit_compile=jit_compile, uint8_input=uint8)
        loss, probabilities, _ = step(iter(strategy.experimental_distribute_dataset(batches)))
        results[uint8] = (float(loss), probabilities.numpy(), model.get_weights())
    assert abs(results[True][0] - results[False][0]) <= 1e-6
    np.testing.assert_allclose(results[True][1], results[False][1], rtol=0, atol=1e-6)
    for after_uint8, after_float in zip(results[True][2], results[False][2]):
        np.testing.assert_allclose(after_uint8, after_float, rtol=0, atol=1e-6)


def test_the_front_refuses_float_rgb_batches():
    front = GrayToRGB()
    with pytest.raises(ValueError, match="uint8"):
        front(tf.zeros((2, SIZE, SIZE, 3)))


def test_training_with_a_gpu_feeds_uint8_by_default_and_saves_the_float_model(shards, tmp_path, monkeypatch):
    data_dir, _ = shards
    fed = []
    real = input_pipeline.make_train_dataset
    monkeypatch.setattr(input_pipeline, "make_train_dataset",
                        lambda *args, **kwargs: fed.append(kwargs["stream"].uint8_gray) or real(*args, **kwargs))
    predictions = {}
    for name, transfer, gpu in (("gpu", "auto", True), ("float", "float32", False)):
        _with_a_gpu(monkeypatch, visible=gpu)
        config = TrainConfig(backbone="tiny_test", data_dir=data_dir, weights="none", global_batch_size=8,
                             epochs=1, steps_per_epoch=2, precision="float32", strategy="default",
                             deterministic=True, transfer=transfer, model_dir=str(tmp_path / name))
        result = loop.run_training(config)
        assert result["config"]["transfer"] == ("uint8" if gpu else "float32")
        predictions[name] = read_predictions(result["val_predictions_path"])
        saved = keras.models.load_model(result["model_path"])
        assert saved.input_shape == (None, SIZE, SIZE, 3) and saved.inputs[0].dtype == "float32"
    assert fed == [True, False]
    with open(tmp_path / "gpu" / run_folder.CONFIG) as f:
        assert json.load(f)["transfer"] == "uint8"
    assert list(predictions["gpu"].ids) == list(predictions["float"].ids)
    np.testing.assert_allclose(predictions["gpu"].probs, predictions["float"].probs, rtol=0, atol=1e-6)
