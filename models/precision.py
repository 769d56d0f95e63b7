"""The trained classifier under another dtype policy: a clone of its own graph, never a rebuild."""

from __future__ import annotations

import keras

from contracts.run_folder import MODEL_PRECISION
from models.builder import all_layers
from models.heads import FINDINGS_LAYER, OUTPUT_LAYER


def _with_dtype(layer: keras.Layer, policy: str) -> keras.Layer:
    config = layer.get_config()
    config["dtype"] = policy
    return layer.__class__.from_config(config)


def _pinned_to_float32(classifier: keras.Model) -> set[str]:
    # build_classifier pins to float32 the layers before the backbone (a nested model) and the heads'
    # outputs: the softmax, the findings' sigmoids and the layer joining them.
    pinned = {classifier.layers[-1].name, OUTPUT_LAYER, FINDINGS_LAYER}
    for layer in classifier.layers:
        if isinstance(layer, keras.Model):
            break
        pinned.add(layer.name)
    return pinned


def with_policy(classifier: keras.Model, policy: str) -> keras.Model:
    """A copy of a `build_classifier` model and its weights under `policy` (pinned layers stay float32)."""
    pinned = _pinned_to_float32(classifier)

    def top_level(layer):
        if isinstance(layer, keras.Model):  # the backbone: every layer under the policy
            return keras.models.clone_model(layer, clone_function=lambda inner: _with_dtype(inner, policy),
                                            recursive=True)
        return _with_dtype(layer, "float32" if layer.name in pinned else policy)

    copy = keras.models.clone_model(classifier, clone_function=top_level)
    copy.set_weights(classifier.get_weights())
    return copy


def as_policy(classifier: keras.Model, policy: str) -> keras.Model:
    """`classifier` itself when it already computes in float32 and `policy` is float32, else a clone."""
    layers = all_layers(classifier)
    if policy == MODEL_PRECISION and all(layer.dtype_policy.name == policy for layer in layers):
        return classifier
    return with_policy(classifier, policy)
