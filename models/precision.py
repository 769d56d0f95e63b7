"""The trained classifier under another dtype policy: a clone of its own graph, never a rebuild by flags.

A saved or trained classifier carries one dtype policy per layer. To export a mixed-precision run
as float32, or to predict with a float32 `model.keras` under mixed precision, the classifier's
graph is cloned layer by layer from the layers' own configs with the new policy, and given the
same weights. Whatever a constructor added (EfficientNet's ImageNet-only `Rescaling`) is in that
graph, so the clone computes the same function up to the policy's rounding.
"""

from __future__ import annotations

import keras


def _with_dtype(layer: keras.Layer, policy: str) -> keras.Layer:
    config = layer.get_config()
    config["dtype"] = policy
    return layer.__class__.from_config(config)


def _pinned_to_float32(classifier: keras.Model) -> set[str]:
    # build_classifier pins the normalisation in front of the backbone and the softmax to float32:
    # the top-level layers before the first nested model, and the output layer.
    pinned = {classifier.layers[-1].name}
    for layer in classifier.layers:
        if isinstance(layer, keras.Model):
            break
        pinned.add(layer.name)
    return pinned


def with_policy(classifier: keras.Model, policy: str) -> keras.Model:
    """Returns a copy of `classifier` computing under `policy`, with its current weights.

    Args:
      classifier: a `models.build_classifier` model (trained, or loaded from `model.keras`).
      policy: a Keras dtype policy name ("float32", "mixed_float16", "mixed_bfloat16").

    Returns:
      A new model: the same layers (from their configs) under `policy`, except the layers
      `build_classifier` pins to float32; its weights are copies of `classifier`'s.
    """
    pinned = _pinned_to_float32(classifier)

    def top_level(layer):
        if isinstance(layer, keras.Model):  # the backbone: every layer under the policy
            return keras.models.clone_model(layer, clone_function=lambda inner: _with_dtype(inner, policy),
                                            recursive=True)
        return _with_dtype(layer, "float32" if layer.name in pinned else policy)

    copy = keras.models.clone_model(classifier, clone_function=top_level)
    copy.set_weights(classifier.get_weights())
    return copy
