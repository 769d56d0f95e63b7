"""The backbone registry, the heads, the in-model normalisation and the weights options."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from contracts import settings
from models import preprocessing
from training import step as step_lib
from training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32  # the smallest input the three Keras Applications accept
SUBPROCESS_TIMEOUT_S = 120

# The reference heads, layer by layer after the backbone: (class, rate | units, activation).
REFERENCE_HEADS = {
    "efficientnet_b3": [("GlobalAveragePooling2D",), ("BatchNormalization",), ("Dropout", 0.3),
                        ("Dense", 1024, "relu"), ("Dense", 2, "softmax")],
    "resnet50": [("GlobalAveragePooling2D",), ("Dense", 1024, "relu"), ("Dropout", 0.5),
                 ("Dense", 2, "softmax")],
    "densenet121": [("GlobalAveragePooling2D",), ("BatchNormalization",), ("Dropout", 0.3),
                    ("Dense", 1024, "relu"), ("Dropout", 0.3), ("Dense", 2, "softmax")],
}
REFERENCE_OPTIMIZERS = {"efficientnet_b3": ("adam", 1e-4, True), "resnet50": ("sgd", 1e-3, False),
                        "densenet121": ("adam", 1e-4, True)}


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test and puts the previous one back."""
    previous = keras.mixed_precision.global_policy()
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy(previous)


def _images(batch: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (batch, SIZE, SIZE, 3)).astype("float32")


def _describe(layer) -> tuple:
    name = type(layer).__name__
    if isinstance(layer, keras.layers.Dropout):
        return (name, layer.rate)
    if isinstance(layer, keras.layers.Dense):
        return (name, layer.units, layer.activation.__name__)
    return (name,)


def test_every_registered_backbone_is_tested_and_test_backbones_stay_off_the_cli():
    assert set(REFERENCE_HEADS) == set(models.BACKBONES)
    assert not set(models.TEST_BACKBONES) & set(settings.specs(TrainConfig)["backbone"][1].choices)


@pytest.mark.parametrize("name", list(models.BACKBONES) + list(models.TEST_BACKBONES))
def test_every_entry_builds_and_returns_float32_probabilities_under_mixed_bfloat16(name, policy):
    policy("mixed_bfloat16")
    model = models.build_model(name, SIZE, weights="none")
    probabilities = model(_images(), training=False)
    assert tuple(probabilities.shape) == (3, 2)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, atol=1e-3)
    # The body really runs in bfloat16: only the output layer is pinned to float32.
    assert models.inference_model(model).get_layer("head_dense").compute_dtype == "bfloat16"


@pytest.mark.parametrize("name", list(models.BACKBONES))
def test_heads_and_defaults_are_the_reference(name):
    model = models.build_model(name, SIZE, weights="none", augment=False)
    backbone_index = next(i for i, layer in enumerate(model.layers) if isinstance(layer, keras.Model))
    assert [_describe(layer) for layer in model.layers[backbone_index + 1:]] == REFERENCE_HEADS[name]
    spec = models.get_backbone(name)
    assert (spec.optimizer, spec.learning_rate, spec.augment) == REFERENCE_OPTIMIZERS[name]
    assert models.get_backbone("resnet50").epochs == 5


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError, match="efficientnet_b3, resnet50, densenet121"):
        models.build_model("vgg16", SIZE, weights="none")


@pytest.mark.parametrize("layers, reference", [
    (preprocessing.caffe, keras.applications.resnet50.preprocess_input),
    (preprocessing.torch, keras.applications.densenet.preprocess_input),
])
def test_in_model_normalisation_matches_keras_applications(layers, reference):
    images = _images()
    x = tf.constant(images)
    for layer in layers():
        x = layer(x)
    np.testing.assert_allclose(x.numpy(), reference(images.copy()), rtol=1e-5, atol=1e-4)


def test_augmentation_follows_the_backbone_default_and_is_identity_at_inference():
    def randomised(model):
        return any("Random" in type(layer).__name__ for layer in _all_layers(model))

    assert randomised(models.build_model("tiny_test", SIZE, weights="none", augment=True))
    assert not randomised(models.build_model("tiny_test", SIZE, weights="none"))
    model = models.build_model("tiny_test", SIZE, weights="none", augment=True)
    images = _images()
    np.testing.assert_allclose(model(images, training=False), model(images, training=False))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def test_weights_file_loads_into_the_backbone(tmp_path):
    source = models.build_model("tiny_test", SIZE, weights="none")
    path = str(tmp_path / "tiny.weights.h5")
    source.get_layer("tiny_test").save_weights(path)
    loaded = models.build_model("tiny_test", SIZE, weights=path, seed=1)
    for a, b in zip(source.get_layer("tiny_test").get_weights(), loaded.get_layer("tiny_test").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_file_names_it(tmp_path):
    missing = str(tmp_path / "nope.weights.h5")
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        models.build_model("tiny_test", SIZE, weights=missing)


def test_imagenet_without_network_or_cache_fails_clearly(tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"),
               # A dead proxy stands in for "no internet" even where there is one.
               HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")
    code = f"import models; models.build_model('resnet50', {SIZE}, weights='imagenet')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode != 0
    assert "UserInputError" in done.stderr
    assert "weights=none" in done.stderr and "keras_home" in done.stderr


def test_saved_normalisation_loads_with_safe_mode_in_a_fresh_process(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for layer in preprocessing.caffe():
        x = layer(x)
    path = str(tmp_path / "caffe.keras")
    keras.Model(inputs, x).save(path)
    images = _images(1)
    np.save(tmp_path / "x.npy", images)
    code = ("import sys, keras, numpy as np, models.preprocessing; "
            f"m = keras.models.load_model({path!r}, safe_mode=True); "
            f"np.save({str(tmp_path / 'y.npy')!r}, m(np.load({str(tmp_path / 'x.npy')!r})))")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                   timeout=SUBPROCESS_TIMEOUT_S)
    expected = keras.applications.resnet50.preprocess_input(images)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(models.BACKBONES))
def test_one_training_step_per_real_backbone(name):
    strategy = tf.distribute.get_strategy()
    spec = models.get_backbone(name)
    model = models.build_model(name, SIZE, weights="none")
    optimizer = step_lib.make_optimizer(spec.optimizer, spec.learning_rate, "float32")
    optimizer.build(model.trainable_variables)
    batch = {"image": tf.constant(_images(4)), "label": tf.constant([0, 1, 0, 1], tf.int32)}
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
    step = step_lib.make_train_step(strategy, model, optimizer, global_batch_size=4)
    kernel = models.inference_model(model).get_layer("head_dense").kernel
    before = kernel.numpy().copy()
    loss, probabilities, labels = step(iterator)
    assert np.isfinite(loss.numpy())
    assert probabilities.shape == (4, 2) and list(labels.numpy()) == [0, 1, 0, 1]
    assert not np.allclose(kernel.numpy(), before)
    assert int(optimizer.iterations.numpy()) == 1


def test_batchnorm_momentum_reaches_every_nested_batchnorm():
    default = models.build_model("densenet121", 32, weights="none")
    lowered = models.build_model("densenet121", 32, weights="none", batchnorm_momentum=0.9)

    def momenta(model):
        found, stack = [], list(model.layers)
        while stack:
            layer = stack.pop()
            if isinstance(layer, keras.layers.BatchNormalization):
                found.append(layer.momentum)
            stack.extend(getattr(layer, "layers", []))
        return found

    assert len(momenta(default)) > 100 and set(momenta(default)) == {0.99}
    assert len(momenta(lowered)) == len(momenta(default)) and set(momenta(lowered)) == {0.9}
    with pytest.raises(ValueError, match="batchnorm_momentum"):
        models.builder.set_batchnorm_momentum(lowered, 1.0)


def _backbone_of(model):
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def test_efficientnet_from_scratch_is_cut_after_its_third_stage_and_only_when_asked():
    """At 64 px the whole EfficientNetB3 ends on 2x2 maps; from scratch it learns when cut at 8x8."""
    from models import registry

    layer = registry.resolve_feature_layer("efficientnet_b3", registry.FEATURE_LAYER_FROM_SCRATCH)
    cut = models.build_classifier("efficientnet_b3", 64, weights="none", feature_layer=layer)
    whole = models.build_classifier("efficientnet_b3", 64, weights="none")
    assert _backbone_of(cut).output_shape == (None, 8, 8, 48)
    assert _backbone_of(whole).output_shape == (None, 2, 2, 1536)
    assert _backbone_of(cut).count_params() < 250_000 < 10_000_000 < _backbone_of(whole).count_params()
    assert cut(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3))).shape == (2, 2)
    # The other backbones keep their whole network from scratch; an empty value is the whole backbone.
    assert registry.resolve_feature_layer("resnet50", registry.FEATURE_LAYER_FROM_SCRATCH) is None
    assert registry.resolve_feature_layer("efficientnet_b3", "") is None


def test_feature_layer_cuts_after_the_weights_file_is_loaded_and_survives_a_save(tmp_path):
    source = models.build_model("tiny_test", SIZE, weights="none", seed=3)
    path = str(tmp_path / "tiny.weights.h5")
    source.get_layer("tiny_test").save_weights(path)
    cut = models.build_classifier("tiny_test", SIZE, weights=path, feature_layer="tiny_relu1")
    assert _backbone_of(cut).output_shape == (None, SIZE // 2, SIZE // 2, 8)
    kept = {w.path: w.numpy() for w in _backbone_of(cut).weights}
    loaded = {w.path: w.numpy() for w in source.get_layer("tiny_test").weights if w.path in kept}
    assert sorted(kept) == sorted(loaded) and len(kept) == 6  # conv1 kernel and bias, bn1's four
    for name, value in kept.items():
        np.testing.assert_array_equal(value, loaded[name])
    # The cut network is what gets saved and served: reloaded it gives the same probabilities.
    os.makedirs(tmp_path / "run")
    cut.save(str(tmp_path / "run" / "model.keras"))
    with open(tmp_path / "run" / "config.json", "w") as f:  # the loader checks the size against it
        json.dump({"backbone": "tiny_test", "image_size": SIZE}, f)
    from models.saved import load_classifier

    images = _images(3)
    np.testing.assert_allclose(load_classifier(str(tmp_path / "run"))(images), cut(images), atol=1e-6)


def test_unknown_feature_layer_is_a_one_line_user_error():
    from contracts.errors import UserInputError

    with pytest.raises(UserInputError, match="feature_layer=block9z_add: tiny_test has no such layer"):
        models.build_classifier("tiny_test", SIZE, weights="none", feature_layer="block9z_add")
