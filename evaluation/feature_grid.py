"""Where each cell of a feature map sits over the input image: (offset, stride) per axis, cell i
centred at offset + stride * i, read by walking the classifier's layers ("same" padding, strided
1x1 convolutions and ZeroPadding2D shift the grid off even tiling by up to half a cell)."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

_WINDOWED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
             keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


@dataclasses.dataclass(frozen=True)
class Grid:
    """Cell i of an axis (rows, columns) is centred at offset + stride * i input pixels."""
    offset: tuple[float, float]
    stride: tuple[float, float]
    from_layers: bool  # False: even tiling assumed (the walk could not follow the graph)


def _windowed(layer, geometry, in_shape, out_shape):
    kernel = layer.pool_size if hasattr(layer, "pool_size") else layer.kernel_size
    dilation = getattr(layer, "dilation_rate", (1, 1))
    offsets, strides = [], []
    for axis in (0, 1):
        size_in, size_out = in_shape[1 + axis], out_shape[1 + axis]
        span = (kernel[axis] - 1) * dilation[axis] + 1
        total = 0
        if layer.padding == "same":
            total = max((size_out - 1) * layer.strides[axis] + span - size_in, 0)
        offset, stride = geometry[0][axis], geometry[1][axis]
        offsets.append(offset + stride * (-(total // 2) + (span - 1) / 2))  # TF pads the smaller half first
        strides.append(stride * layer.strides[axis])
    return tuple(offsets), tuple(strides)


def _layer_grid(layer, inputs, in_shapes, out_shape):
    """The grid of a layer's output, from its inputs' grids; None when it is not a spatial map."""
    if len(out_shape) != 4:
        return None
    if isinstance(layer, _WINDOWED):
        return _windowed(layer, inputs[0], in_shapes[0], out_shape) if inputs[0] else None
    if isinstance(layer, (keras.layers.ZeroPadding2D, keras.layers.Cropping2D)):
        sign = -1 if isinstance(layer, keras.layers.ZeroPadding2D) else 1
        edges = layer.padding if sign < 0 else layer.cropping
        offset, stride = inputs[0]
        return tuple(offset[a] + sign * stride[a] * edges[a][0] for a in (0, 1)), stride
    # Elementwise layers, merges (a squeeze-excitation's (1, 1, C) input is broadcast), activations:
    # the grid of the input that has the output's spatial size.
    for grid, shape in zip(inputs, in_shapes):
        if grid is not None and len(shape) == 4 and tuple(shape[1:3]) == tuple(out_shape[1:3]):
            return grid
    if all(grid is None for grid in inputs):
        return None  # made from pooled features (a squeeze-excitation's Reshape), not from the image grid
    raise ValueError(f"layer {layer.name} ({type(layer).__name__}) changes the grid in a way not modelled")


def _walk(model: keras.Model, grid, found: dict) -> object:
    # Keras 3's functional graph through a private attribute; a graph it cannot follow falls back.
    found[id(model.inputs[0])] = grid
    for depth in sorted(model._nodes_by_depth, reverse=True):  # inputs first
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            inputs = [found.get(id(t)) for t in node.input_tensors]
            if isinstance(node.operation, keras.Model):
                out = _walk(node.operation, inputs[0], found)
            else:
                out = _layer_grid(node.operation, inputs, [tuple(t.shape) for t in node.input_tensors],
                                  tuple(node.outputs[0].shape))
            for tensor in node.outputs:
                found[id(tensor)] = out
    return found.get(id(model.outputs[0]))


def feature_grid(classifier: keras.Model, feature_tensor) -> Grid:
    """The grid of `feature_tensor` (4-D, in `classifier`'s graph) over the input; even tiling
    (`from_layers` False) when a layer's effect on the grid is not modelled."""
    size = (int(classifier.input_shape[1]), int(classifier.input_shape[2]))
    cells = (int(feature_tensor.shape[1]), int(feature_tensor.shape[2]))
    found: dict = {}
    try:
        _walk(classifier, ((0.5, 0.5), (1.0, 1.0)), found)
        walked = found.get(id(feature_tensor))
    except (ValueError, AttributeError, TypeError, IndexError):
        walked = None
    if walked is not None:
        return Grid(tuple(float(v) for v in walked[0]), tuple(float(v) for v in walked[1]), True)
    stride = tuple(size[a] / cells[a] for a in (0, 1))
    return Grid(tuple(s / 2 for s in stride), stride, False)


def upsampling_matrix(cells: int, size: int, offset: float, stride: float) -> np.ndarray:
    """The (size, cells) matrix of linear interpolation from cell centres offset + stride * i to
    pixel centres p + 0.5, constant beyond the first and last centres (as `tf.image.resize` is)."""
    matrix = np.zeros((size, cells), np.float32)
    for pixel in range(size):
        u = min(max((pixel + 0.5 - offset) / stride, 0.0), cells - 1.0)
        low = min(int(math.floor(u)), max(cells - 2, 0))
        weight = u - low
        matrix[pixel, low] += 1.0 - weight
        if weight:
            matrix[pixel, low + 1] += weight
    return matrix
