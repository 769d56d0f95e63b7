"""An emulation of TensorFlow Serving's REST API over a SavedModel, in-process, for the docs' client code.

The rules are TF Serving's own, from its documentation ("RESTful API",
https://www.tensorflow.org/tfx/serving/api_rest, the same text as tensorflow/serving's
tensorflow_serving/g3doc/api_rest.md) and the code it describes (tensorflow_serving/util/json_tensor.cc
for the JSON <-> tensor rules and their error messages, model_servers/http_server.cc for the HTTP
status of each error code):

- POST /v1/models/NAME[/versions/N|/labels/L]:predict; a body with "signature_name" (default
  "serving_default") and either "instances" (row format) or "inputs" (columnar), never both.
- Row format: a non-empty list; with one input, its values (a b64 object is a value), else objects
  holding exactly the signature's input names; every instance the same shape; stacked on axis 0.
- Columnar: one input's whole value, or an object with every input name (other keys ignored).
- A DT_STRING value is a JSON string (its UTF-8 bytes, as they are) or {"b64": "..."}, the only way to
  send binary bytes; a b64 object for a number is a type error.
- Response: row format -> {"predictions": [...]}, per instance an object keyed by output name when the
  signature has several outputs, else the bare value; columnar -> {"outputs": {...}} (or the value).
  Floats are written as the shortest %g that reads back the same, else 9 (float) or 17 (double)
  digits; string outputs named *_bytes come back as {"b64": ...}.
- Errors: {"error": "message"} with the status of the error's code (400 for a bad argument, 404 for
  an unknown model or version, 500 otherwise).

Checked here by this emulation only, not against a tensorflow_model_server binary.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.message
import http
import io
import json
import re
import urllib.error
import urllib.request
import urllib.response
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"
PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                  r"(?::(?P<verb>classify|regress|predict))?")
# model_servers/http_server.cc ToHTTPStatusCode, for the codes a predict call can return
STATUS = {tf.errors.INVALID_ARGUMENT: 400, tf.errors.FAILED_PRECONDITION: 400, tf.errors.OUT_OF_RANGE: 400,
          tf.errors.NOT_FOUND: 404, tf.errors.RESOURCE_EXHAUSTED: 429, tf.errors.UNIMPLEMENTED: 501,
          tf.errors.UNAVAILABLE: 503}


class RestError(Exception):
    """A request TF Serving refuses: an HTTP status and the "error" message of its body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


def _show(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "True" if value is True else "False"), (dict, "Object"), (list, "Array"),
                       (str, "String"), ((int, float), "Number")):
        if isinstance(value, kind):
            return name
    return "Null"


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf(value: Any, dtype: tf.DType) -> Any:
    type_error = RestError(f"JSON Value: {_show(value)} Type: {_json_type(value)} is not of expected type: "
                           f"{dtype.name}")
    if isinstance(value, dict):
        if dtype != tf.string:
            raise type_error
        if not _is_b64(value):
            raise RestError(f"JSON Value: {_show(value)} not formatted correctly for base64 data")
        try:  # absl::Base64Unescape: the standard alphabet, padding optional
            return base64.b64decode(value["b64"] + "=" * (-len(value["b64"]) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise RestError("Unable to base64 decode") from None
    if dtype == tf.string:
        if not isinstance(value, str):
            raise type_error
        return value.encode("utf-8")
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise type_error
        return value
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (dtype.is_integer and not isinstance(value, int)):
        raise type_error
    return value


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _tensor(value: Any, dtype: tf.DType) -> np.ndarray:
    """A JSON value as a dense array of `dtype`, by json_tensor.cc's FillTensorProto rules."""
    shape, leaves = _shape(value), []

    def fill(node: Any, level: int) -> None:
        if not isinstance(node, list):
            if level != len(shape):
                raise RestError(f"JSON Value: {_show(node)} found at incorrect level: {level + 1} in the JSON "
                                f"DOM. Expected at level: {len(shape)}")
            leaves.append(_leaf(node, dtype))
            return
        if level >= len(shape):
            raise RestError(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(node) != shape[level]:
            raise RestError(f"Encountered list at unexpected size: {len(node)} at level: {level} expected "
                            f"size: {shape[level]}")
        for child in node:
            fill(child, level + 1)

    fill(value, 0)
    kind = object if dtype == tf.string else dtype.as_numpy_dtype
    return np.array(leaves, dtype=kind).reshape(shape)


def _from_instances(instances: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise RestError(f"JSON Value: {_show({'instances': instances})} Excepting 'instances' to be an list/array")
    if not instances:
        raise RestError(f"JSON Value: {_show({'instances': instances})} No values in 'instances' array")
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise RestError("instances is a plain list, but expecting list of objects as multiple input tensors "
                        "required as per tensorinfo_map")
    rows: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    for index, instance in enumerate(instances):
        is_object = isinstance(instance, dict) and not _is_b64(instance)
        if is_object != objects:
            raise RestError(f"Expecting {'object but got list' if objects else 'value/list but got object'} at "
                            f"item {index} of input list")
        named = instance if objects else {next(iter(specs)): instance}
        for name, value in named.items():
            if name not in specs:
                raise RestError(f"Failed to process element: {index} key: {name} of 'instances' list. Error: "
                                f"JSON object: does not have named input: {name}")
            try:
                rows[name].append(_tensor(value, specs[name].dtype))
            except RestError as err:
                raise RestError(f"Failed to process element: {index} of 'instances' list. Error: "
                                f"INVALID_ARGUMENT: {err.message}") from None
        if set(named) != set(specs):
            raise RestError(f"Failed to process element: {index} of 'instances' list. JSON object: "
                            f"{_show(instance)} keys must be equal to: {','.join(sorted(specs))}")
    for tensors in rows.values():
        if len({t.shape for t in tensors}) > 1:
            raise RestError(f"Expecting shape {list(tensors[0].shape)} but got: "
                            f"{next(list(t.shape) for t in tensors if t.shape != tensors[0].shape)}")
    return {name: np.stack(tensors) for name, tensors in rows.items()}


def _from_inputs(inputs: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(specs) > 1:
            raise RestError("inputs is a plain value/list, but expecting an object as multiple input tensors "
                            "required as per tensorinfo_map")
        name = next(iter(specs))
        return {name: _tensor(inputs, specs[name].dtype)}
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise RestError(f"Missing named input: {missing[0]} in 'inputs' object.")
    return {name: _tensor(inputs[name], spec.dtype) for name, spec in specs.items()}


def _number(value: Any, digits: int, kind: type) -> Any:
    """json_tensor.cc's WriteDecimal: %g when it reads back the same value, else full precision."""
    if isinstance(value, (np.floating, float)):
        if not np.isfinite(value):
            return float(value)  # json writes NaN, Infinity and -Infinity, as TF Serving does
        text = f"{value:g}"
        if kind(text) != value:
            text = f"{value:.{digits}g}"
        return float(text)
    return value


def _jsonable(array: Any, name: str) -> Any:
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind == "S":
        as_bytes = name.endswith("_bytes")
        convert = np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()} if as_bytes
                               else b.decode("utf-8", "replace"), otypes=[object])
        return convert(array).tolist() if array.ndim else convert(array).item()
    if array.dtype.kind == "f":
        digits, kind = (9, np.float32) if array.dtype == np.float32 else (17, np.float64)
        return np.vectorize(lambda v: _number(kind(v), digits, kind), otypes=[object])(array).tolist()
    return array.tolist()


class TfServingRest:
    """One SavedModel served as TF Serving serves a version folder: `handle(method, path, body)`."""

    def __init__(self, export_dir: str, model_name: str = "cxr", version: int = 1):
        self.loaded = tf.saved_model.load(export_dir)
        self.model_name, self.version = model_name, version

    def _signature(self, name: str):
        if name not in self.loaded.signatures:
            raise RestError(f'Serving signature name: "{name}" not found in signature def')
        function = self.loaded.signatures[name]
        return function, function.structured_input_signature[1]

    def predict(self, body: bytes) -> dict[str, Any]:
        """The JSON response of one predict body; RestError as TF Serving would refuse it."""
        try:
            request = json.loads(body) if body else None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RestError(f"JSON Parse error: {err}") from None
        if request is None:
            raise RestError("JSON Parse error: The document is empty")
        if not isinstance(request, dict):
            raise RestError(f"JSON Value: {_show(request)} Is not object")
        name = request.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(name, str):
            raise RestError(f"JSON Value: {_show(request)} not formatted correctly. 'signature_name' key must be "
                            "a string value.")
        function, specs = self._signature(name)
        if "instances" in request and "inputs" in request:
            raise RestError(f"JSON Value: {_show(request)} Not formatted correctly expecting only one of "
                            "'inputs' or 'instances' keys to exist ")
        if "instances" in request:
            inputs, row = _from_instances(request["instances"], specs), True
        elif "inputs" in request:
            inputs, row = _from_inputs(request["inputs"], specs), False
        else:
            raise RestError("Missing 'inputs' or 'instances' key")
        try:
            outputs = function(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
        except tf.errors.OpError as err:
            raise RestError(err.message, STATUS.get(err.error_code, 500)) from None
        except (ValueError, TypeError) as err:  # a shape or dtype the signature does not take
            raise RestError(str(err)) from None
        arrays = {k: v.numpy() for k, v in outputs.items()}
        if not row:
            values = {k: _jsonable(v, k) for k, v in arrays.items()}
            return {"outputs": values if len(values) > 1 else next(iter(values.values()))}
        rows = len(next(iter(arrays.values())))
        if len(arrays) == 1:
            return {"predictions": _jsonable(next(iter(arrays.values())), next(iter(arrays)))}
        return {"predictions": [{k: _jsonable(v[i], k) for k, v in arrays.items()} for i in range(rows)]}

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of one request, errors as {"error": message}."""
        try:
            match = PATH.fullmatch(path)
            if match is None or (method, match["verb"]) not in (("POST", "predict"), ("GET", None)):
                raise RestError(f"Malformed request: {method} {path}")
            if match["name"] != self.model_name or match["version"] not in (None, str(self.version)):
                asked = (f"Specific({match['name']}, {match['version']})" if match["version"]
                         else f"Latest({match['name']})")
                raise RestError(f"Servable not found for request: {asked}", 404)
            if match["verb"] is None:  # the model status API
                return 200, {"model_version_status": [{"version": str(self.version), "state": "AVAILABLE",
                                                       "status": {"error_code": "OK", "error_message": ""}}]}
            return 200, self.predict(body)
        except RestError as err:
            return err.status, {"error": err.message}


@contextlib.contextmanager
def serving_at(export_dir: str, base_url: str = "http://localhost:8501", model_name: str = "cxr",
               version: int = 1) -> Iterator[TfServingRest]:
    """Replaces urllib.request.urlopen so that requests to `base_url` reach TF Serving's REST API
    emulated over `export_dir` (as version `version` of `model_name`); any other URL is refused."""
    server = TfServingRest(export_dir, model_name, version)
    real = urllib.request.urlopen
    base = base_url.rstrip("/")

    def urlopen(url, data=None, timeout=None, **_):
        request = url if isinstance(url, urllib.request.Request) else urllib.request.Request(url, data)
        body = data if data is not None else request.data
        if body is not None and not isinstance(body, bytes):
            body = body.read() if hasattr(body, "read") else bytes(body)
        full = request.full_url
        if not full.startswith(base + "/"):
            raise urllib.error.URLError(f"no server at {full}: only {base} is emulated")
        method = request.get_method() if data is None else "POST"
        status, payload = server.handle(method, full[len(base):].split("?")[0], body or b"")
        headers = email.message.Message()
        headers["Content-Type"] = "application/json"
        stream = io.BytesIO(json.dumps(payload, indent=4).encode())
        if status != 200:
            raise urllib.error.HTTPError(full, status, http.HTTPStatus(status).phrase, headers, stream)
        return urllib.response.addinfourl(stream, headers, full, status)

    urllib.request.urlopen = urlopen
    try:
        yield server
    finally:
        urllib.request.urlopen = real
