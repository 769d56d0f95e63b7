"""docs/serving.md's TF Serving client, run exactly as the page shows it against TF Serving's REST API
(emulated by tests/tf_serving_rest.py) over an ensemble export, answers what predict.py --images does."""

import base64
import json
import os
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from contracts import ensemble_file
from serving import exporter
from serving.config import ExportConfig
from tests.dicom_factory import write_dicom
from tests.shard_factory import synthetic_pixels
from tests.test_api import predict_images, train_ensemble
from tests.tf_serving_rest import TfServingRest, serving_at

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "docs", "serving.md")
HEADING = "## TensorFlow Serving"
URL = "http://localhost:8501"
PREDICT = "/v1/models/cxr:predict"
RUNS = ("runs/efficientnet_b3", "runs/densenet121", "runs/resnet50")  # the names the page uses


def python_blocks(text: str) -> list[str]:
    """Every ```python block of a page's `text`, in order, exactly as the page shows it."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def docs_block(path: str = PAGE, heading: str = HEADING) -> str:
    """The first ```python block under `heading`."""
    with open(path) as f:
        text = f.read()
    return python_blocks(text[text.index(f"\n{heading}\n"):])[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The docs' example world in small: served/ensemble and new_studies/ with PNGs, a JPEG, a DICOM."""
    root = tmp_path_factory.mktemp("tf_serving")
    dirs, ensemble = train_ensemble(root, RUNS, weights=(0.6, 0.3, 0.1))
    exporter.run_export(ExportConfig(dirs, str(root / "served" / "ensemble"), ensemble=ensemble))
    studies = root / "new_studies"
    studies.mkdir()
    rng = np.random.default_rng(11)
    pixels = [synthetic_pixels(rng, 40, abnormal=k % 2 == 1) for k in range(4)]
    Image.fromarray(pixels[0]).save(studies / "0001.png")
    Image.fromarray(pixels[1]).save(studies / "0002.png")
    Image.fromarray(pixels[2]).save(studies / "0003.jpg", quality=92)
    write_dicom(str(studies / "0004.dcm"), pixels[3])
    expected, _, _ = predict_images(root, str(studies), "new", model_dir=dirs, ensemble=ensemble)
    return {"root": root, "export": str(root / "served" / "ensemble"), "expected": expected,
            "threshold": ensemble_file.load_ensemble(ensemble).threshold}


def _body(instances, **extra) -> bytes:
    return json.dumps({"instances": instances, **extra}).encode()


def _b64(path) -> dict:
    with open(path, "rb") as f:
        return {"b64": base64.b64encode(f.read()).decode()}


def test_the_documented_client_gets_predict_images_numbers(world, monkeypatch):
    code = docs_block()
    assert "urllib.request.urlopen" in code and URL + PREDICT in code
    monkeypatch.chdir(world["root"])
    namespace: dict = {}
    with serving_at(world["export"], URL, model_name="cxr"):
        exec(compile(code, PAGE, "exec"), namespace)
    names = [os.path.basename(p) for p in namespace["paths"]]
    predictions = namespace["predictions"]
    assert len(names) == len(predictions) >= 3
    expected = world["expected"].loc[names, "p_abnormal"].to_numpy()
    np.testing.assert_allclose([p["p_abnormal"] for p in predictions], expected, atol=1e-6, rtol=0)
    assert [p["decision"] for p in predictions] == (expected >= world["threshold"]).astype(int).tolist()
    assert set(predictions[0]) == {"p_abnormal", "logit", "decision", "member_p_uncalibrated"}


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
    assert np.shape(columns["outputs"]["member_p_uncalibrated"]) == (2, len(RUNS))
    expected = world["expected"].loc[["0001.png", "0003.jpg"], "p_abnormal"].to_numpy()
    np.testing.assert_allclose(columns["outputs"]["p_abnormal"], expected, atol=1e-6, rtol=0)
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


def test_every_python_block_of_the_page_runs_in_order_in_one_namespace(world, monkeypatch):
    with open(PAGE) as f:
        blocks = python_blocks(f.read())
    assert len(blocks) >= 3
    monkeypatch.chdir(world["root"])
    namespace: dict = {}
    with serving_at(world["export"], URL, model_name="cxr"):
        for block in blocks:
            exec(compile(block, PAGE, "exec"), namespace)
    table = namespace["table"]  # the Python API's first example: score_files("new_studies")
    assert sorted(table.index) == sorted(world["expected"].index) == ["0001.png", "0002.png", "0003.jpg",
                                                                      "0004.dcm"]
    np.testing.assert_allclose(table["p_abnormal"], world["expected"].loc[table.index, "p_abnormal"], atol=1e-6,
                               rtol=0)
