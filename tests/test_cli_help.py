"""Every entry point's --help lists its own flags, exits 0, and does not import TensorFlow to do so."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# entry point -> flags its help must list (one per owner the defaults come from, where it has one)
TOOLS = {
    "train.py": ["--backbone: <efficientnet_b3|resnet50|densenet121>", "--shuffle_buffer", "(default: '2048')",
                 "--learning_rate", "efficientnet_b3 0.0001", "--data_service"],
    "predict.py": ["--model_dir", "--global_batch_size", "(default: '64')", "--bootstrap"],
    "ensemble.py": ["--predictions", "--fit_on", "efficientnet_b3 0.6", "(default: '0.05')"],
    "export.py": ["--export_dir", "--ensemble", "--threshold"],
    "explain.py": ["--image_ids", "--per_group", "(default: '4')", "explanations.json"],
    "demo.py": ["--nih_dir", "--backbones", "(default: \"['efficientnet_b3', 'resnet50', 'densenet121']\")"],
    "data_service.py": ["--role: <dispatcher|worker>", "--dispatcher", "5050 for the dispatcher"],
    os.path.join("preprocess", "build_tfrecords.py"): ["--image_dir", "--max_image_pixels", "(default: '64000000')",
                                                        "--runner: <local|beam>", "--beam_pipeline_args"],
    os.path.join("preprocess", "synthetic.py"): ["--num_patients", "(default: '120')"],
}

_WRAPPER = """
import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({script!r}, run_name="__main__")
    code = 0
except SystemExit as exit:
    code = exit.code or 0
heavy = sorted(m for m in ("tensorflow", "keras") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


# entry point -> its config (every command-line setting of it must be in --help)
CONFIGS = {"train.py": "training.config:TrainConfig", "predict.py": "evaluation.settings:PredictConfig",
           "ensemble.py": "evaluation.settings:EnsembleConfig", "export.py": "serving.config:ExportConfig",
           "explain.py": "evaluation.settings:ExplainConfig", "demo.py": "demo:DemoConfig",
           "data_service.py": "pipeline.options:DataServiceConfig",
           os.path.join("preprocess", "build_tfrecords.py"): "preprocess.config:BuildConfig",
           os.path.join("preprocess", "synthetic.py"): "preprocess.synthetic_data:SyntheticConfig"}


def _every_flag(script: str) -> list[str]:
    """The names of the command-line settings of the script's config."""
    import importlib

    from contracts import settings

    module, name = CONFIGS[script].split(":")
    config_type = getattr(importlib.import_module(module), name)
    return [name for name, (_, spec, _) in settings.specs(config_type).items() if spec.flag]


@pytest.mark.parametrize("script", sorted(TOOLS))
def test_help_lists_the_tools_flags_without_tensorflow(script):
    done = subprocess.run([sys.executable, "-c", _WRAPPER.format(script=script)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    for fragment in TOOLS[script]:
        assert fragment in done.stdout, (fragment, done.stdout[:3000])
    for name in _every_flag(script):  # every flag, each with its help text
        assert re.search(rf"^  --(\[no\])?{name}: \S", done.stdout, re.MULTILINE), (name, done.stdout[:3000])
    assert "HEAVY:\n" in done.stderr or done.stderr.rstrip().endswith("HEAVY:")


CONSOLE_SCRIPTS = {"cxr-build": "--image_dir", "cxr-synthetic": "--num_patients", "cxr-train": "--backbone",
                   "cxr-predict": "--model_dir", "cxr-ensemble": "--predictions", "cxr-export": "--export_dir",
                   "cxr-explain": "--per_group",
                   "cxr-demo": "--backbones", "cxr-data-service": "--role"}


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_console_scripts_run_the_same_mains_from_any_folder(script, tmp_path):
    path = os.path.join(os.path.dirname(sys.executable), script)  # installed by setup.cfg's entry points
    assert os.path.isfile(path), f"{script} is not installed; run make install"
    done = subprocess.run([path, "--help"], cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
    assert CONSOLE_SCRIPTS[script] in done.stdout


def _demo_plan(*argv: str):
    """The demo's plan for a command line, as `cli.run` builds the config from it."""
    from absl import flags

    import demo
    from contracts import cli

    values = flags.FlagValues()
    cli.define_flags(demo.DemoConfig, values)
    values(["cxr-demo", *argv])
    return demo.make_plan(cli.config_from_flags(demo.DemoConfig, values))


def test_the_demo_from_another_folder_writes_and_reads_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = _demo_plan()
    # The stages run inside the repository; every path they get is absolute from the caller's folder.
    assert plan.output_dir == os.path.join(str(tmp_path), "runs", "demo")


def test_the_real_data_demo_after_the_synthetic_one_has_its_own_folder_and_runs_offline(tmp_path, monkeypatch):
    """`make demo`, then `make demo NIH_DIR=... WEIGHTS=none IMAGE_SIZE=128`: the second plan."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nih_sample").mkdir()
    synthetic, real = _demo_plan(), _demo_plan("--nih_dir=nih_sample", "--weights=none", "--image_size=128")
    assert real.output_dir == os.path.join(str(tmp_path), "runs", "demo-nih_sample") != synthetic.output_dir
    assert (real.nih_dir, real.weights, real.image_size) == (str(tmp_path / "nih_sample"), "none", 128)
    # From random weights both cut EfficientNetB3 where it learns (models/registry.py); from ImageNet
    # weights the whole backbone trains, as in the reference.
    from models import registry

    assert synthetic.feature_layer == real.feature_layer == registry.FEATURE_LAYER_FROM_SCRATCH
    assert _demo_plan("--nih_dir=nih_sample").feature_layer is None


# docs/tools.md, "What TensorFlow prints at start-up": what remains at the project's default level,
# written by TensorFlow's C++ code before its log level can apply. Nothing else may come first.
DOCUMENTED_REMAINDER = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                        "port.cc", "cudart_stub.cc", "cuda_platform.cc")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from tests.shard_factory import write_shards

    path = str(tmp_path_factory.mktemp("shards"))
    write_shards(path, {"train": 8, "val": 4}, image_size=32, shards_per_split=1)
    return path


def _startup_lines(shards: str, model_dir: str, env_level: str | None) -> tuple[list[str], list[str]]:
    """Runs a train.py that loads TensorFlow, then fails on its weights file; returns (lines before
    the tool's first line, every line)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if env_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = env_level
    done = subprocess.run([sys.executable, "train.py", "--backbone=resnet50", f"--data_dir={shards}",
                           f"--model_dir={model_dir}", "--weights=/nonexistent/w.weights.h5", "--global_batch_size=4"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-1500:]
    lines = done.stderr.splitlines()
    first_own = next(i for i, line in enumerate(lines) if " train.py:" in line)
    return lines[:first_own], lines


def test_tensorflow_start_up_prints_only_the_documented_lines(shards, tmp_path):
    before, lines = _startup_lines(shards, str(tmp_path / "run"), None)
    assert before[0] == DOCUMENTED_REMAINDER[0]
    unexpected = [line for line in before if not any(kind in line for kind in DOCUMENTED_REMAINDER)]
    assert unexpected == []
    assert not any("cpu_feature_guard" in line for line in lines)  # dropped by the default level
    assert lines[-1].startswith("train.py: ") and "/nonexistent/w.weights.h5" in lines[-1]


def test_the_users_tensorflow_log_level_wins(shards, tmp_path):
    _, lines = _startup_lines(shards, str(tmp_path / "run"), "0")
    assert any("cpu_feature_guard" in line for line in lines)


def test_make_demo_passes_data_weights_size_and_epochs_through():
    done = subprocess.run(["make", "-n", "demo", "NIH_DIR=../shared/data/nih_sample", "WEIGHTS=none",
                           "IMAGE_SIZE=128", "EPOCHS=3"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    command = done.stdout.replace("\\\n", " ")
    for flag in ("--nih_dir=../shared/data/nih_sample", "--weights=none", "--image_size=128", "--epochs=3"):
        assert flag in command, command


def test_the_demo_reuses_outputs_of_its_own_plan_and_replaces_those_of_another(tmp_path, monkeypatch, capsys):
    import demo
    from preprocess import synthetic_data as synthetic

    plan = _demo_plan(f"--output_dir={tmp_path / 'demo'}")
    demo.claim_output(plan)
    (tmp_path / "demo" / "models").mkdir()
    (tmp_path / "demo" / "submission.csv").write_text("image_id,label\n")
    demo.claim_output(plan)  # the same plan: finished work stays for reuse
    assert (tmp_path / "demo" / "models").is_dir() and "replacing" not in capsys.readouterr().out
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    demo.claim_output(plan)  # a new generator: the old data and models are not reused
    assert not (tmp_path / "demo" / "models").exists() and not (tmp_path / "demo" / "submission.csv").exists()
    assert capsys.readouterr().out.count("replacing") == 1
