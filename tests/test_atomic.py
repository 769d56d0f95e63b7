"""contracts.atomic: a SIGKILL at any step of a multi-file transaction leaves whole files, and the next
Transaction on the same anchor restores all the old files or keeps all the new, with no temporary left."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from contracts import atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OLD = {"a.txt": "old a", "b.txt": "old b, longer", "report/x.txt": "old x", "report/keep.txt": "kept"}
NEW = {"a.txt": "new a, much longer than old a", "b.txt": "new b", "c.txt": "new c, created",
       "report/x.txt": "new x in the report", "report/y.txt": "new y, created", "report/keep.txt": "kept",
       "out/model.bin": "a staged folder's file"}

# Counts every file-system call the transaction makes (and one inside each file's write) and
# SIGKILLs itself at call number argv[2]; 0 runs to the end and prints the count.
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from contracts import atomic

    folder, kill_at, texts, steps = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), [0]

    def step():
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def counted(call):
        def run(*args, **kwargs):
            step()
            return call(*args, **kwargs)
        return run

    for name in ("replace", "rename", "remove", "unlink", "rmdir", "link", "fsync", "mkdir"):
        setattr(os, name, counted(getattr(os, name)))

    def write(path, text):
        with atomic.atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write(text[:3])
            f.flush()
            step()  # half written
            f.write(text[3:])

    def at(name):
        return os.path.join(folder, name)

    tx = atomic.Transaction(at("a.txt"))
    with tx:
        tx.guard(at("a.txt"), at("b.txt"), at("c.txt"), at("report"))
        for name in ("a.txt", "b.txt", "c.txt", "report/x.txt", "report/y.txt"):
            write(at(name), texts[name])
        with tx:  # a nested block commits nothing by itself
            with tx.path(at("out")) as staging:
                os.mkdir(staging)
                write(os.path.join(staging, "model.bin"), texts["out/model.bin"])
    print(steps[0])
""")


def _files(folder) -> dict[str, str]:
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:  # latin-1: any bytes (a report's PNG) as text
                found[os.path.relpath(path, folder).replace(os.sep, "/")] = f.read().decode("latin-1")
    return found


def _make_old(folder) -> None:
    for name, text in OLD.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def _child(folder, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(folder), str(kill_at), json.dumps(NEW)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=60)


def test_a_kill_at_every_step_leaves_whole_files_and_a_rerun_restores_old_or_keeps_new(tmp_path):
    dry = tmp_path / "dry"
    _make_old(dry)
    done = _child(dry, 0)
    assert done.returncode == 0, done.stderr
    assert _files(dry) == NEW
    total = int(done.stdout)
    assert _child(dry, 0).returncode == 0 and _files(dry) == NEW  # a second run over the new files
    assert total > 30  # every write, link, rename and removal counts
    outcomes = set()
    for kill_at in range(1, total + 1):
        folder = tmp_path / f"k{kill_at}"
        _make_old(folder)
        done = _child(folder, kill_at)
        assert done.returncode == -signal.SIGKILL, (kill_at, done.stderr)
        for name in ("a.txt", "b.txt", "c.txt", "report/x.txt", "report/y.txt"):  # never half a file
            path = os.path.join(folder, name)
            if os.path.exists(path):
                with open(path) as f:
                    assert f.read() in (OLD.get(name), NEW[name]), (kill_at, name)
        atomic.Transaction(str(folder / "a.txt"))  # what the rerun does first
        after = _files(folder)
        assert after in (OLD, NEW), (kill_at, sorted(after))  # no mix and no .partial-* left
        outcomes.add("new" if after == NEW else "old")  # so a rerun starts as the first run or the second
    assert outcomes == {"old", "new"}  # kills before and after the commit point both happened


def test_a_failure_inside_the_block_restores_every_guarded_path(tmp_path):
    _make_old(tmp_path)
    tx = atomic.Transaction(str(tmp_path / "a.txt"))
    with pytest.raises(RuntimeError, match="late"), tx:
        tx.guard(str(tmp_path / "a.txt"), str(tmp_path / "c.txt"), str(tmp_path / "report"))
        atomic.write_text(str(tmp_path / "a.txt"), "new")
        atomic.write_text(str(tmp_path / "c.txt"), "created")
        atomic.write_text(str(tmp_path / "report" / "x.txt"), "new")
        with tx:
            atomic.write_text(str(tmp_path / "report" / "y.txt"), "created")
        assert _files(tmp_path)["report/y.txt"] == "created"  # the block reads back what it wrote
        raise RuntimeError("late")
    assert _files(tmp_path) == OLD


def test_single_file_writes_keep_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "f.json")
    atomic.write_json(path, {"auroc": float("nan"), "n": [1.5, float("inf")]})
    with open(path) as f:
        assert f.read() == '{\n  "auroc": null,\n  "n": [\n    1.5,\n    null\n  ]\n}\n'
    with pytest.raises(ValueError), atomic.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise ValueError
    assert _files(tmp_path) == {"f.json": '{\n  "auroc": null,\n  "n": [\n    1.5,\n    null\n  ]\n}\n'}


def test_a_build_with_no_usable_record_leaves_its_manifest_and_no_shard(tmp_path):
    from preprocess import builder
    from preprocess.config import BuildConfig

    images = tmp_path / "images"
    images.mkdir()
    (images / "junk.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    result = builder.build(BuildConfig(image_dir=str(images), output_dir=str(out), split_by="unlabeled",
                                       workers=1))
    assert not result.ok
    assert [name for name in os.listdir(out) if name.endswith(".tfrecord")] == []
    with open(out / "manifest.json") as f:
        manifest = json.load(f)
    assert [s["image"] for s in manifest["skipped"]] == ["junk.png"]
    assert all(split["shards"] == [] for split in manifest["splits"].values())


def test_an_ensemble_that_fails_at_its_last_file_keeps_the_previous_run(tmp_path):
    import numpy as np

    from contracts.prediction_files import write_predictions
    from evaluation import ensembling
    from evaluation.settings import EnsembleConfig

    ids = [f"{i:03d}.png" for i in range(20)]
    labels = np.arange(20) % 2
    inputs = []
    for name, noise in (("efficientnet_b3", 0.1), ("resnet50", 0.3)):
        inputs.append(str(tmp_path / "in" / f"{name}.csv"))
        probs = np.clip(0.25 + 0.5 * labels + np.random.default_rng(0).normal(0, noise, 20), 0, 1)
        write_predictions(inputs[-1], ids, probs, labels, {"backbone": name})
    out = tmp_path / "out"
    ensembling.run_ensemble(EnsembleConfig(inputs, str(out / "sub.csv"), blend_weight=[0.5, 0.5], bootstrap=0))
    before = _files(out)
    assert "sub.csv" in before and "sub_report/metrics.json" in before
    # The submission is written last; its bad columns fail after the report and the blend.
    with pytest.raises(ensembling.UserInputError, match="two different non-empty names"):
        ensembling.run_ensemble(EnsembleConfig(inputs, str(out / "sub.csv"), blend_weight=[0.9, 0.1], bootstrap=0,
                                               submission_id_column="x", submission_label_column="x"))
    assert _files(out) == before
