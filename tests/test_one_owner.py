"""One owner for every fact: a new backbone is one registry entry; formats and flags live in one place."""

import ast
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

import demo
from contracts import cli, settings
from contracts import manifest as manifest_lib
from contracts.errors import UserInputError
from contracts.prediction_files import read_predictions, write_predictions
from evaluation import blend
from evaluation.settings import EnsembleConfig
from models import registry
from pipeline import input_pipeline
from tests.shard_factory import write_shards
from training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THROWAWAY = "throwaway_net"


@pytest.fixture
def throwaway(monkeypatch):
    """Registers a fourth backbone (built on the test backbone) for the duration of a test."""
    spec = dataclasses.replace(registry.TEST_BACKBONES["tiny_test"], epochs=7, learning_rate=3e-4,
                               ensemble_weight=0.25, from_scratch_learning_rate=2e-3)
    monkeypatch.setitem(registry.BACKBONES, THROWAWAY, spec)
    return spec


def _flags(config_type, *argv: str) -> flags.FlagValues:
    """A tool's flags, as `cli.run` defines them, parsed from `argv`."""
    values = flags.FlagValues()
    cli.define_flags(config_type, values)
    values(["tool", *argv])
    return values


def test_a_registered_backbone_reaches_flags_help_ensemble_and_demo_with_no_other_edit(throwaway, tmp_path):
    train = _flags(TrainConfig, f"--backbone={THROWAWAY}", "--data_dir=d", "--model_dir=m")
    assert cli.config_from_flags(TrainConfig, train).backbone == THROWAWAY
    assert f"{THROWAWAY} 7" in train["epochs"].help and f"{THROWAWAY} 0.0003" in train["learning_rate"].help

    assert f"{THROWAWAY} 0.25" in _flags(EnsembleConfig)["blend_weight"].help
    paths = []
    for name, backbone in (("a", THROWAWAY), ("b", "resnet50")):
        path = str(tmp_path / f"{name}.csv")
        write_predictions(path, ["x", "y"], np.array([0.2, 0.8]), sidecar={"backbone": backbone})
        paths.append(path)
    weights = blend.reference_weights([read_predictions(p) for p in paths])
    np.testing.assert_allclose(weights, [0.25 / 0.35, 0.1 / 0.35])  # resnet50's reference weight is 0.1

    assert THROWAWAY in demo.DemoConfig().backbones and THROWAWAY in _flags(demo.DemoConfig)["backbones"].default
    chosen = _flags(demo.DemoConfig, f"--backbones={THROWAWAY}", "--backbones=resnet50")
    plan = demo.make_plan(cli.config_from_flags(demo.DemoConfig, chosen))
    assert plan.learning_rates == {THROWAWAY: 2e-3, "resnet50": registry.BACKBONES["resnet50"].from_scratch_learning_rate}
    import models

    assert models.build_model(THROWAWAY, 32, weights="none").output_shape == (None, 2)


def test_an_unregistered_backbone_is_refused_with_the_valid_names():
    with pytest.raises(flags.IllegalFlagValueError, match="efficientnet_b3"):
        _flags(TrainConfig, "--backbone=vgg16")
    with pytest.raises(UserInputError, match="backbone='vgg16' is not one of efficientnet_b3"):
        TrainConfig(backbone="vgg16", data_dir="d", model_dir="m")  # from Python too
    assert TrainConfig(backbone="tiny_test", data_dir="d", model_dir="m").backbone == "tiny_test"  # tests' own


def test_a_name_defined_twice_in_one_tool_raises():
    tool = _flags(TrainConfig)
    with pytest.raises(flags.DuplicateFlagError):
        cli.define_flags(TrainConfig, tool)


def _tools(monkeypatch) -> dict[str, type]:
    """Every installed tool (setup.cfg's console scripts) -> the config type its `run` hands to
    `cli.run`, found by running it with `cli.run` replaced: no tool can be left out."""
    import configparser
    import importlib

    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    tools = {}
    for line in config["options.entry_points"]["console_scripts"].strip().splitlines():
        script, target = (part.strip() for part in line.split("="))
        module, function = target.split(":")
        captured = []
        monkeypatch.setattr(cli, "run", lambda config_type, *args, captured=captured, **kwargs:
                            captured.append(config_type))
        getattr(importlib.import_module(module), function)()
        (tools[script],) = captured
    return tools


def test_a_name_several_tools_take_is_defined_once_and_shared(monkeypatch):
    """One meaning per name: every tool's field of a name several tools take comes from one `Shared`."""
    tools = _tools(monkeypatch)
    assert len(set(tools.values())) == len(tools) > 1
    meanings: dict[str, dict[str, object]] = {}  # name -> tool -> its Shared (None: defined apart)
    for script, config_type in tools.items():
        values = flags.FlagValues()  # each tool alone, as it runs
        cli.define_flags(config_type, values)
        for name, (_, spec, _) in settings.specs(config_type).items():
            if spec.flag:
                assert name in values
                meanings.setdefault(name, {})[script] = spec.shared
    several = {name: by_tool for name, by_tool in meanings.items() if len(by_tool) > 1}
    apart = {name: by_tool for name, by_tool in several.items()
             if len({id(shared) for shared in by_tool.values()}) != 1 or None in by_tool.values()}
    assert not apart, f"taken by several tools but not from one Shared (define them with NAME.field): {apart}"
    assert {"data_dir", "model_dir", "split", "global_batch_size", "weights", "threshold", "output_dir",
            "seed", "workers", "image_size", "crop", "num_patients", "source_size"} <= set(several)


def test_every_tool_defines_its_flags_without_importing_tensorflow():
    code = (
        "import sys, dataclasses\n"
        "from absl import flags\n"
        "from contracts import cli\n"
        "import demo\n"
        "from evaluation import settings\n"
        "from pipeline import options\n"
        "from preprocess import config as build\n"
        "from preprocess import synthetic_data\n"
        "from serving import config as export\n"
        "from training import config as train\n"
        "for config_type in (train.TrainConfig, settings.PredictConfig, settings.EnsembleConfig,\n"
        "                    settings.ExplainConfig, export.ExportConfig, build.BuildConfig, demo.DemoConfig,\n"
        "                    options.DataServiceConfig, synthetic_data.SyntheticConfig):\n"
        "    cli.define_flags(config_type, flags.FlagValues())\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'pandas', 'sklearn') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_manifest_carries_a_schema_version_and_old_manifests_still_read(tmp_path):
    folder = str(tmp_path / "shards")
    written = write_shards(folder, {"eval": 9}, image_size=16)
    path = os.path.join(folder, manifest_lib.MANIFEST)
    with open(path) as f:
        record = json.load(f)
    assert record["schema_version"] == manifest_lib.SCHEMA_VERSION
    del record["schema_version"]  # as today's builder's shards were written
    with open(path, "w") as f:
        json.dump(record, f)
    assert manifest_lib.ShardFolder.open(folder).schema_version == 1
    ids = [i.decode() for batch in input_pipeline.make_eval_dataset(manifest_lib.ShardFolder.open(folder), "eval", 4)
           for i in batch["image_id"].numpy()]
    assert sorted(ids) == sorted(r["image_id"] for r in written["eval"])


def _imports(package: str) -> set[str]:
    found = set()
    for root, _, names in os.walk(os.path.join(REPO, package)):
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and node.module:
                        found.add(node.module.split(".")[0])
                    elif isinstance(node, ast.Import):
                        found.update(alias.name.split(".")[0] for alias in node.names)
    return found


@pytest.mark.parametrize("package, forbidden", [
    ("contracts", {"preprocess", "pipeline", "models", "training", "evaluation", "serving"}),
    ("preprocess", {"pipeline", "models", "training", "evaluation", "serving"}),
    ("pipeline", {"preprocess", "models", "training", "evaluation", "serving"}),
    ("models", {"preprocess", "training", "evaluation", "serving"}),
    ("training", {"preprocess", "evaluation", "serving"}),
    ("evaluation", {"preprocess", "serving"}),
])
def test_data_flows_down_never_back_up(package, forbidden):
    assert _imports(package) & forbidden == set()


@pytest.mark.parametrize("args, expected", [
    ([], os.path.join("runs", "demo")),
    (["--nih_dir={data}"], os.path.join("runs", "demo-nih")),
    (["--nih_dir={data}/", "--output_dir=elsewhere"], "elsewhere"),
])
def test_demo_runs_are_keyed_by_their_data(args, expected, tmp_path):
    # The synthetic demo and a real-data demo never share (and refuse) each other's shard folders.
    data = tmp_path / "nih"
    data.mkdir()
    values = _flags(demo.DemoConfig, *[a.format(data=data) for a in args])
    assert demo.make_plan(cli.config_from_flags(demo.DemoConfig, values)).output_dir == os.path.abspath(expected)
