"""docs/serving.md's TF Serving client, run exactly as the page shows it against TF Serving's REST API
(emulated by tests/tf_serving_rest.py) over an ensemble export, answers what predict.py --images does."""

import base64
import json
import os
import pathlib
import urllib.error
import urllib.request

import numpy as np
import pytest

from contracts import ensemble_file
from tests import example_world
from tests.docs_check import REPO, block_under
from tests.test_api import PARITY, predict_images
from tests.tf_serving_rest import TfServingRest, serving_at

PAGE = os.path.join(REPO, "docs", "serving.md")
HEADING = "## TensorFlow Serving"
URL = "http://localhost:8501"
PREDICT = "/v1/models/cxr:predict"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The docs' example world, and predict.py --images --ensemble on its new_studies/."""
    world = example_world.build(str(tmp_path_factory.mktemp("tf_serving")))
    root = pathlib.Path(world["root"])
    expected, _, _ = predict_images(root, world["studies"], "new", model_dir=world["runs"],
                                    ensemble=world["ensemble"])
    return {**world, "expected": expected, "threshold": ensemble_file.load_ensemble(world["ensemble"]).threshold}


def _body(instances, **extra) -> bytes:
    return json.dumps({"instances": instances, **extra}).encode()


def _b64(path) -> dict:
    with open(path, "rb") as f:
        return {"b64": base64.b64encode(f.read()).decode()}


def test_the_documented_client_gets_predict_images_numbers(world, monkeypatch):
    code = block_under(PAGE, HEADING).text
    assert "urllib.request.urlopen" in code and URL + PREDICT in code
    monkeypatch.chdir(world["root"])
    namespace: dict = {}
    with serving_at(world["export"], URL, model_name="cxr"):
        exec(compile(code, PAGE, "exec"), namespace)  # noqa: S102  (the page's own client)
    names = [os.path.basename(p) for p in namespace["paths"]]
    predictions = namespace["predictions"]
    assert len(names) == len(predictions) >= 3
    expected = world["expected"].loc[names, "p_abnormal"].to_numpy()
    np.testing.assert_allclose([p["p_abnormal"] for p in predictions], expected, atol=PARITY, rtol=0)
    assert [p["decision"] for p in predictions] == (expected >= world["threshold"]).astype(int).tolist()
    assert set(predictions[0]) == {"p_abnormal", "logit", "decision", "member_p_uncalibrated", "member_p_abnormal",
                                   "p_spread", "triage", "implausible"}
    assert [p["triage"] for p in predictions] == world["expected"].loc[names, "triage"].tolist()


def test_a_body_without_b64_objects_fails_as_tf_serving_fails_it(world):
    server = TfServingRest(world["export"], "cxr")
    png = os.path.join(world["root"], "new_studies", "0001.png")
    encoded = _b64(png)
    with open(png, "rb") as f:
        raw = f.read().decode("latin-1")
    # A bare string is its UTF-8 bytes, never base64-decoded: the graph refuses the text.
    for wrong in (encoded["b64"], raw):
        status, answer = server.handle("POST", PREDICT, _body([{"image_bytes": wrong}]))
        assert status == 400 and "not a PNG or JPEG image" in answer["error"], answer
    status, answer = server.handle("POST", PREDICT, _body([{"image_bytes": {"b64": "@@@@"}}]))
    assert (status, answer) == (400, {"error": "Failed to process element: 0 of 'instances' list. Error: "
                                               "INVALID_ARGUMENT: Unable to base64 decode"})
    # Through urlopen: an HTTPError carrying TF Serving's {"error": ...} body.
    request = urllib.request.Request(URL + PREDICT, _body([{"image_bytes": encoded["b64"]}]))
    with serving_at(world["export"], URL, model_name="cxr"), pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request)
    assert caught.value.code == 400 and "not a PNG or JPEG image" in json.load(caught.value)["error"]


def test_row_columnar_versions_and_errors_follow_the_rest_rules(world):
    server = TfServingRest(world["export"], "cxr", version=1)
    studies = os.path.join(world["root"], "new_studies")
    images = [_b64(os.path.join(studies, name)) for name in ("0001.png", "0003.jpg")]
    status, rows = server.handle("POST", "/v1/models/cxr/versions/1:predict", _body(images))  # bare values
    assert status == 200 and len(rows["predictions"]) == 2
    status, columns = server.handle("POST", PREDICT, json.dumps({"inputs": {"image_bytes": images}}).encode())
    assert status == 200
    assert columns["outputs"]["p_abnormal"] == [p["p_abnormal"] for p in rows["predictions"]]
    assert np.shape(columns["outputs"]["member_p_uncalibrated"]) == (2, len(world["runs"]))
    expected = world["expected"].loc[["0001.png", "0003.jpg"], "p_abnormal"].to_numpy()
    np.testing.assert_allclose(columns["outputs"]["p_abnormal"], expected, atol=PARITY, rtol=0)
    refused = {
        "/v1/models/other:predict": (404, "Servable not found for request: Latest(other)"),
        "/v1/models/cxr/versions/2:predict": (404, "Servable not found for request: Specific(cxr, 2)"),
    }
    for path, (code, message) in refused.items():
        assert server.handle("POST", path, _body(images)) == (code, {"error": message})
    for body, message in [(b"", "JSON Parse error"), (_body([]), "No values in 'instances' array"),
                          (_body(images, signature_name="nope"), 'Serving signature name: "nope" not found'),
                          (_body([{"pixels": images[0]}]), "does not have named input: pixels"),
                          (json.dumps({"instances": images, "inputs": images}).encode(), "expecting only one")]:
        status, answer = server.handle("POST", PREDICT, body)
        assert status == 400 and message in answer["error"], (body[:80], answer)
