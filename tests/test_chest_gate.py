"""The frontal-chest gate: DICOMs that are not frontal chest radiographs and images too small or flat to
be films are skipped with their reason, by the builder and `predict.py --images`; files the gate cannot
check are kept and listed as unchecked. Colour JPEG 2000 (YBR_RCT) builds."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest
import tensorflow as tf
from PIL import Image

from contracts import records
from contracts.decode_rules import MIN_IMAGE_SIDE, MIN_IMAGE_STD
from preprocess import builder, chest_gate, dicom, images
from preprocess.config import BuildConfig
from tests.dicom_factory import write_dicom
from tests.test_predict_images import SIZE, _save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
YBR_RCT_FILES = ("GDCMJ2K_TextGBR.dcm", "examples_jpeg2k.dcm")  # in pydicom's own test data


def _noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _records(output_dir: str) -> dict[str, dict]:
    with open(os.path.join(output_dir, "manifest.json")) as f:
        manifest = json.load(f)
    paths = [os.path.join(output_dir, s) for split in manifest["splits"].values() for s in split["shards"]]
    return {r["image_id"]: r for r in (records.example_to_dict(x.numpy()) for x in tf.data.TFRecordDataset(paths))}


def _reasons(manifest: dict) -> dict[str, str]:
    return {s["image"]: s["reason"] for s in manifest["skipped"]}


def test_predict_images_scores_the_chest_films_and_skips_the_rest_with_reasons(shared_dicom, tmp_path):
    """The issue's acceptance case, with the unchecked file and the three implausible PNGs."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in sorted(os.listdir(shared_dicom)):
        shutil.copy(os.path.join(shared_dicom, name), folder / name)
    film = _noise((160, 160))
    write_dicom(str(folder / "ct.dcm"), film, overrides={"Modality": "CT", "BodyPartExamined": "CHEST"})
    write_dicom(str(folder / "lateral.dcm"), film, view="LL", overrides={"Modality": "CR"})
    write_dicom(str(folder / "hand.dcm"), film, overrides={"Modality": "CR", "BodyPartExamined": "HAND"})
    write_dicom(str(folder / "untagged.dcm"), film, view=None, overrides={"Modality": None})
    Image.new("L", (1, 1)).save(folder / "one.png")
    Image.fromarray(_noise((32, 32))).save(folder / "small.png")
    Image.new("L", (1024, 1024), 128).save(folder / "flat.png")
    run = str(tmp_path / "run")
    model = _save_model(run, 0)
    output = str(tmp_path / "preds.csv")
    done = subprocess.run([sys.executable, "predict.py", f"--model_dir={run}", f"--images={folder}",
                           f"--output={output}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    scored = pd.read_csv(output).set_index("image_id")["p_abnormal"]
    assert sorted(scored.index) == ["siim_chest_pa.dcm", "siim_chest_pa_monochrome1.dcm", "untagged.dcm"]
    for name in scored.index:  # the model on the builder's own decoding, computed here
        stored = images.process((folder / name).read_bytes(), box=None, image_size=SIZE, image_format="png")
        gray = np.asarray(Image.open(io.BytesIO(stored.encoded)), np.float32)
        expected = model(np.repeat(gray[None, :, :, None], 3, axis=-1), training=False).numpy()[0, 1]
        assert scored[name] == pytest.approx(expected, abs=1e-5), name
    with open(output[:-4] + ".json") as f:
        sidecar = json.load(f)
    reasons = _reasons(sidecar)
    assert sorted(reasons) == ["ct.dcm", "flat.png", "hand.dcm", "lateral.dcm", "one.png", "small.png"]
    assert "Modality CT is not a projection radiograph" in reasons["ct.dcm"]
    assert "ViewPosition LL is not a frontal view" in reasons["lateral.dcm"]
    assert "BodyPartExamined HAND is not the chest" in reasons["hand.dcm"]
    assert "1x1 image: its shorter side is below 128 px" in reasons["one.png"]
    assert "32x32 image: its shorter side is below 128 px" in reasons["small.png"]
    assert "nearly constant pixels (standard deviation 0.00 grey levels" in reasons["flat.png"]
    # The real files carry CR, CHEST and PA: checked. The file without the tags is kept and listed.
    assert sidecar["unchecked"] == [{"image": "untagged.dcm", "missing": list(chest_gate.TAGS)}]
    assert "6 file(s) skipped" in done.stdout and "1 scored file(s) not checked" in done.stdout


@pytest.mark.parametrize("values, refused, missing", [
    ({"Modality": "ct", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}, "Modality ct is not", []),
    ({"Modality": " cr ", "BodyPartExamined": "Chest", "ViewPosition": "ap"}, None, []),  # any case
    ({"Modality": "DX", "BodyPartExamined": None, "ViewPosition": "LATERAL"}, "ViewPosition LATERAL", []),
    ({"Modality": "DX", "BodyPartExamined": "SKULL", "ViewPosition": None}, "BodyPartExamined SKULL", []),
    ({"Modality": None, "BodyPartExamined": "", "ViewPosition": "PA"}, None, ["Modality", "BodyPartExamined"]),
    ({"View Position": "RL"}, "View Position RL is not a frontal view", []),
    ({"View Position": ""}, None, ["View Position"]),
])
def test_the_gate_refuses_by_tag_and_lists_what_it_could_not_check(values, refused, missing):
    reason, lacking = chest_gate.check(chest_gate.DEFAULT, values)
    assert (reason is None) == (refused is None) and (refused is None or refused in reason)
    assert lacking == missing


def test_an_empty_setting_checks_nothing_and_lists_nothing():
    gate = chest_gate.Gate(modalities=(), body_parts=(), views=("PA",))
    assert chest_gate.check(gate, {"Modality": "MR", "BodyPartExamined": None, "ViewPosition": None}) == (
        None, ["ViewPosition"])


def _entry_folder(tmp_path, views: dict[str, str]) -> str:
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, (name, view) in enumerate(views.items()):
        Image.fromarray(_noise((MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), seed=i)).save(data / name)
        rows.append(f"{name},No Finding,0,{i + 1},50,M,{view},1024,1024,0.14,0.14\n")
    (data / "Data_Entry.csv").write_text(HEADER + "".join(rows))
    return str(data)


def test_a_data_entry_csv_is_gated_by_its_view_position(tmp_path):
    data = _entry_folder(tmp_path, {"pa.png": "PA", "lateral.png": "LL", "blank.png": ""})
    config = dict(data_entry_csv=os.path.join(data, "Data_Entry.csv"), image_dir=data, split_by="all",
                  image_size=16, workers=1, max_skip_fraction=1.0)
    result = builder.build(BuildConfig(output_dir=str(tmp_path / "out"), **config))
    assert sorted(_records(str(tmp_path / "out"))) == ["blank.png", "pa.png"]
    assert "View Position LL is not a frontal view (accepted: PA, AP)" in _reasons(result.manifest)["lateral.png"]
    assert result.manifest["unchecked"] == [{"image": "blank.png", "missing": ["View Position"]}]
    # The accepted views are a setting, compared in any case.
    wider = builder.build(BuildConfig(output_dir=str(tmp_path / "wider"), accepted_views=("pa", "ll"), **config))
    assert sorted(_records(str(tmp_path / "wider"))) == ["blank.png", "lateral.png", "pa.png"]
    assert tuple(wider.manifest["config"]["accepted_views"]) == ("PA", "LL")


def test_implausible_images_are_skipped_at_the_thresholds_and_the_thresholds_are_settings(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    side = MIN_IMAGE_SIDE
    Image.fromarray(_noise((side, side))).save(folder / "smallest.png")
    Image.fromarray(_noise((side - 1, 4 * side))).save(folder / "narrow.png")
    two_levels = np.zeros((side, side), np.uint8)
    two_levels[:, : side // 2] = 2  # half 0, half 2: a standard deviation of exactly 1
    one_level = two_levels // 2  # half 0, half 1: 0.5
    assert np.std(two_levels) == MIN_IMAGE_STD and np.std(one_level) == 0.5
    Image.fromarray(two_levels).save(folder / "faint.png")
    Image.fromarray(one_level).save(folder / "fainter.png")
    config = dict(image_dir=str(folder), split_by="unlabeled", image_size=16, workers=1, max_skip_fraction=1.0)
    result = builder.build(BuildConfig(output_dir=str(tmp_path / "out"), **config))
    assert sorted(_records(str(tmp_path / "out"))) == ["faint.png", "smallest.png"]
    reasons = _reasons(result.manifest)
    assert sorted(reasons) == ["fainter.png", "narrow.png"]
    assert f"{4 * side}x{side - 1} image: its shorter side is below {side} px" in reasons["narrow.png"]
    assert "standard deviation 0.50 grey levels, below min_image_std=1" in reasons["fainter.png"]
    # PNGs carry no tags: the records are listed as unchecked, the skipped files are not.
    assert result.manifest["unchecked"] == [{"image": n, "missing": list(chest_gate.TAGS)}
                                            for n in ("faint.png", "smallest.png")]
    loose = builder.build(BuildConfig(output_dir=str(tmp_path / "loose"), min_image_side=side - 1,
                                      min_image_std=0.5, **config))
    assert loose.manifest["skipped"] == []


def _ybr_rct_files() -> list[str]:
    from pydicom.data import get_testdata_file

    found = [get_testdata_file(name, download=False) for name in YBR_RCT_FILES]
    if not all(found):
        pytest.skip(f"the installed pydicom's test data lacks {YBR_RCT_FILES}")
    return found


def test_colour_jpeg_2000_builds_as_the_luma_of_pydicoms_rgb(tmp_path):
    folder = tmp_path / "j2k"
    folder.mkdir()
    for path in _ybr_rct_files():
        assert pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == "YBR_RCT"
        shutil.copy(path, folder / os.path.basename(path))
        rgb = pydicom.dcmread(path).pixel_array.astype(np.uint32)  # pydicom's RGB
        # ITU-R 601 luma in Pillow's fixed point, written out here.
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        gray = np.asarray(dicom.decode((folder / os.path.basename(path)).read_bytes(), 10**8))
        np.testing.assert_array_equal(gray, luma.astype(np.uint8))
    # examples_jpeg2k.dcm is an ultrasound image (Modality US): the gate lets it in only when asked.
    result = builder.build(BuildConfig(image_dir=str(folder), output_dir=str(tmp_path / "out"),
                                       split_by="unlabeled", image_size=64, workers=1,
                                       accepted_modalities=("CR", "DX", "US")))
    assert result.ok and result.manifest["skipped"] == []
    assert sorted(_records(str(tmp_path / "out"))) == sorted(YBR_RCT_FILES)


def test_predict_and_explain_images_apply_their_own_gate_settings_and_record_them(tmp_path):
    """Catches: predict.py or explain.py building --images with the builder's defaults (their gate flags
    dropped on the way to raw_images.built_images), or the sidecar not recording the gate applied."""
    import explain
    import predict
    from contracts.explanation_folder import load_index
    from evaluation.settings import ExplainConfig, PredictConfig

    folder = tmp_path / "export"
    folder.mkdir()
    write_dicom(str(folder / "lateral.dcm"), _noise((160, 160)), view="LL", overrides={"Modality": "CR"})
    write_dicom(str(folder / "us.dcm"), _noise((160, 160)), overrides={"Modality": "US"})
    Image.fromarray(_noise((40, 40))).save(folder / "small.png")
    run = str(tmp_path / "run")
    _save_model(run, 0)
    gate = dict(accepted_views=("pa", "ll"), min_image_side=40, min_image_std=2.5)
    output = str(tmp_path / "preds.csv")
    predict.main(PredictConfig(model_dir=(run,), images=str(folder), output=output, workers=1,
                               progress=False, **gate))
    assert sorted(pd.read_csv(output)["image_id"]) == ["lateral.dcm", "small.png"]
    with open(output[:-4] + ".json") as f:
        sidecar = json.load(f)
    assert "Modality US is not" in _reasons(sidecar)["us.dcm"]  # the settings left alone keep their defaults
    applied = {"accepted_modalities": ["CR", "DX"], "accepted_body_parts": ["CHEST"],
               "accepted_views": ["PA", "LL"], "min_image_side": 40, "min_image_std": 2.5}
    assert sidecar["gate"] == applied
    explain.main(ExplainConfig(model_dir=(run,), images=str(folder), output_dir=str(tmp_path / "maps"),
                               workers=1, progress=False, **gate))
    index = load_index(str(tmp_path / "maps"))
    assert sorted(image["image_id"] for image in index["images"]) == ["lateral.dcm", "small.png"]
    assert index["source"]["gate"] == applied


@pytest.mark.parametrize("tool", ["predict.py", "explain.py"])
def test_a_gate_flag_with_data_dir_is_refused_in_one_line(tool, tmp_path):
    """Catches: a gate flag silently ignored with --data_dir (whose shards were gated when built), or a
    value equal to the default (in another case) refused."""
    from contracts.errors import UserInputError
    from evaluation.settings import ExplainConfig, PredictConfig

    config = PredictConfig if tool == "predict.py" else ExplainConfig
    where = {"output": "p.csv"} if tool == "predict.py" else {"output_dir": "maps"}
    # The config refuses it, so the library (run_prediction, run_explain) does as the scripts do.
    config(model_dir=("run",), data_dir="shards", accepted_views=(" pa", "Ap"), min_image_side=MIN_IMAGE_SIDE,
           **where)
    out = str(tmp_path / "out")
    done = subprocess.run([sys.executable, tool, f"--model_dir={tmp_path}", f"--data_dir={tmp_path}",
                           f"--{'output' if tool == 'predict.py' else 'output_dir'}={out}",
                           "--accepted_modalities=CT"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--accepted_modalities applies to --images only" in done.stderr
    assert "gated when they were built; rebuild them with build_tfrecords.py" in done.stderr
    with pytest.raises(UserInputError, match="--min_image_std applies to --images only"):
        config(model_dir=("run",), data_dir="shards", min_image_std=0.5, **where)
    assert not os.path.exists(out)


def test_a_dicom_listed_in_a_data_entry_csv_is_gated_by_its_own_tags_too(tmp_path):
    """Catches: a listed DICOM checked by the CSV's View Position alone (a CT slice or a lateral the CSV
    calls PA built as a film), or its missing tags not listed as unchecked."""
    data = tmp_path / "data"
    data.mkdir()
    film = _noise((160, 160))
    write_dicom(str(data / "pa.dcm"), film, patient_id="1", overrides={"Modality": "CR", "BodyPartExamined": "CHEST"})
    write_dicom(str(data / "ct.dcm"), film, patient_id="2", overrides={"Modality": "CT"})
    write_dicom(str(data / "lateral"), film, patient_id="3", view="LL")  # DICOM by content, no extension
    write_dicom(str(data / "untagged.dcm"), film, patient_id="4", view=None, overrides={"Modality": None})
    write_dicom(str(data / "tag_view.dcm"), film, patient_id="5")  # DX, PA; no BodyPartExamined
    rows = [f"{name},No Finding,0,{i},50,M,{view},1024,1024,0.14,0.14\n" for i, (name, view) in enumerate(
        [("pa.dcm", "PA"), ("ct.dcm", "PA"), ("lateral", "PA"), ("untagged.dcm", "PA"), ("tag_view.dcm", "")], 1)]
    (data / "Data_Entry.csv").write_text(HEADER + "".join(rows))
    result = builder.build(BuildConfig(data_entry_csv=str(data / "Data_Entry.csv"), image_dir=str(data),
                                       output_dir=str(tmp_path / "out"), split_by="all", image_size=16, workers=1,
                                       max_skip_fraction=1.0))
    assert sorted(_records(str(tmp_path / "out"))) == ["pa.dcm", "tag_view.dcm", "untagged.dcm"]
    reasons = _reasons(result.manifest)
    assert sorted(reasons) == ["ct.dcm", "lateral"]
    assert "Modality CT is not a projection radiograph" in reasons["ct.dcm"]
    assert "ViewPosition LL is not a frontal view" in reasons["lateral"]
    # The view is checked by whichever of the two gives it; what neither gives is listed.
    assert result.manifest["unchecked"] == [
        {"image": "tag_view.dcm", "missing": ["BodyPartExamined"]},
        {"image": "untagged.dcm", "missing": ["Modality", "BodyPartExamined"]}]


def test_the_python_api_skips_what_predict_py_skips_whichever_way_files_arrive(shared_dicom, tmp_path):
    """Catches: serving.api.Classifier scoring a CT slice, a lateral, a hand or a 64 px DICOM as a film
    when they come as a list of paths or as bytes (only a folder went through the builder's gate)."""
    from serving.api import SKIPPED, Classifier

    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(os.path.join(shared_dicom, "siim_chest_pa.dcm"), folder / "siim_chest_pa.dcm")
    film = _noise((160, 160))
    write_dicom(str(folder / "ct.dcm"), film, overrides={"Modality": "CT", "BodyPartExamined": "CHEST"})
    write_dicom(str(folder / "lateral.dcm"), film, view="LL", overrides={"Modality": "CR"})
    write_dicom(str(folder / "hand.dcm"), film, overrides={"Modality": "CR", "BodyPartExamined": "HAND"})
    write_dicom(str(folder / "small.dcm"), _noise((64, 64)), overrides={"Modality": "DX"})
    run = str(tmp_path / "run")
    model = _save_model(run, 0)
    served = Classifier.from_runs(run)
    paths = sorted(str(p) for p in folder.iterdir())
    stored = images.process((folder / "siim_chest_pa.dcm").read_bytes(), box=None, image_size=SIZE,
                            image_format="png")
    gray = np.asarray(Image.open(io.BytesIO(stored.encoded)), np.float32)
    expected = model(np.repeat(gray[None, :, :, None], 3, axis=-1), training=False).numpy()[0, 1]
    for table in (served.score_files(str(folder)), served.score_files(paths),
                  served.score_bytes({os.path.basename(p): open(p, "rb").read() for p in paths})):
        assert list(table.index) == ["siim_chest_pa.dcm"]
        assert table.loc["siim_chest_pa.dcm", "p_uncalibrated"] == pytest.approx(expected, abs=1e-5)
        reasons = {s["image"]: s["reason"] for s in table.attrs[SKIPPED]}
        assert sorted(reasons) == ["ct.dcm", "hand.dcm", "lateral.dcm", "small.dcm"]
        assert "Modality CT is not a projection radiograph" in reasons["ct.dcm"]
        assert "ViewPosition LL is not a frontal view" in reasons["lateral.dcm"]
        assert "BodyPartExamined HAND is not the chest" in reasons["hand.dcm"]
        assert f"64x64 image: its shorter side is below {MIN_IMAGE_SIDE} px" in reasons["small.dcm"]
