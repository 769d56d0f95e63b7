"""Docs that cannot rot: every relative link resolves, every command line uses only flags (and
values) its tool defines, and every ```python block of README.md and docs/ runs, in the example
world (`tests/example_world.py`), with TF Serving's REST API emulated (`tests/tf_serving_rest.py`).
"""

import os
import re
import sys

import pytest

from tests.docs_check import (
    REPO,
    Tool,
    broken_links,
    command_problems,
    doc_pages,
    python_blocks,
    rel,
    run_examples,
    split_markdown,
)

README = os.path.join(REPO, "README.md")
README_MAX_LINES = 200
PAGE_MAX_LINES = 250

PAGES = [rel(p) for p in doc_pages()]
EXAMPLE_PAGES = [p for p in PAGES if (p == "README.md" or p.startswith("docs/")) and python_blocks(os.path.join(REPO, p))]


def test_readme_is_short_and_promises_nothing_a_clone_lacks():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    assert not [n for n, line in enumerate(lines, 1) if "../shared" in line]
    assert lines[0].startswith("# ")
    first = split_markdown("\n".join(lines))[0][0]  # it opens with the two set-up commands
    assert first.line <= 4 and [c.split()[:2] for c in first.text.splitlines()] == [["make", "demo"], ["make", "test"]]
    top = "\n".join(lines[:40])  # the first screen links the four recipes
    assert len(re.findall(r"^\d\. \[[^\]]+\]\(#\d-[^)]+\)", top, re.M)) == 4


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("docs/")])
def test_each_docs_page_holds_one_topic_on_a_few_screens(page):
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        count = len(f.read().splitlines())
    assert count <= PAGE_MAX_LINES, f"{page} has {count} lines; split it"


def test_every_relative_link_resolves():
    problems = [p for page in doc_pages() for p in broken_links(page)]
    assert not problems, "\n".join(problems)


def test_every_command_uses_only_flags_its_tool_defines():
    tools: dict[str, Tool] = {}
    problems = [p for page in doc_pages() for p in command_problems(page, tools=tools)]
    assert not problems, "\n".join(problems)
    assert {"train.py", "predict.py", "ensemble.py", "export.py"} <= set(tools)  # the checks did run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests import example_world

    root = tmp_path_factory.mktemp("world")
    return example_world.build(str(root))


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_python_examples_run(page, world, monkeypatch):
    from tests import tf_serving_rest

    monkeypatch.chdir(world["root"])
    monkeypatch.setattr(sys, "argv", ["docs-example"])
    with tf_serving_rest.serving_at(world["export"], "http://localhost:8501", model_name="cxr"):
        run_examples(os.path.join(REPO, page))


# --- The checks themselves bite: a small tree with one fault of each kind ------------------------

def _tree(folder, page_text: str) -> str:
    """A repository in `folder` with README.md = `page_text` and the real Makefile, setup.cfg and scripts."""
    folder.mkdir(exist_ok=True)
    for name in ("Makefile", "setup.cfg", "train.py", "export.py", "bench"):
        os.symlink(os.path.join(REPO, name), folder / name)
    (folder / "docs").mkdir()
    (folder / "docs" / "page.md").write_text("# A page\n\n## Two words\n")
    (folder / "README.md").write_text(page_text)
    return str(folder / "README.md")


FENCE = "```"


@pytest.mark.parametrize("command, fault", [
    ("python train.py --backbone=resnet50 --data_dir=s --model_dir=r --epoch=3", "defines no flag --epoch"),
    ("python train.py --backbone=resnet51 --data_dir=s --model_dir=r", "resnet51"),
    ("python train.py --backbone=resnet50 --data_dir=s --model_dir=r --epochs=N", "epochs"),
    ("python train.py --backbone=resnet50 --data_dir=s", "needs --model_dir"),
    ("cd x && cxr-export --model_dir=r --export_dir=e --ensembles=f", "defines no flag --ensembles"),
    ("make demo DATA_DIR=x", "make variable DATA_DIR"),
    ("make demos", "make target demos"),
    ("python bench/serve_bench.py --export_dirs=e", "defines no flag --export_dirs"),
])
def test_the_command_check_catches_a_wrong_flag_value_or_target(tmp_path, command, fault):
    page = _tree(tmp_path, f"# T\n\n{FENCE}sh\n{command} \\\n    --verbosity=1  # a comment\n{FENCE}\n")
    problems = command_problems(page, str(tmp_path))
    assert len(problems) == 1 and fault in problems[0], problems
    good = {"python train.py": "python train.py --backbone=resnet50 --data_dir=s --model_dir=r --epochs=3 "
                               "--nojit_compile",
            "cd x && cxr-export": "cd x && cxr-export --model_dir=r --model_dir=q --export_dir=e --ensemble=f",
            "make demo": "make demo NIH_DIR=x WEIGHTS=none", "make demos": "make test TEST_WORKERS=1",
            "python bench/serve_bench.py": "python bench/serve_bench.py --export_dir=e --json_out=f"}
    fixed = next(v for k, v in good.items() if command.startswith(k))
    page = _tree(tmp_path / "fixed", f"# T\n\n{FENCE}sh\n{fixed}\n{FENCE}\n")
    assert command_problems(page, str(tmp_path / "fixed")) == []


@pytest.mark.parametrize("link, fault", [
    ("[p](docs/pages.md)", "docs/pages.md does not exist"),
    ("[p](docs/page.md#two-word)", "no heading #two-word"),
    ("[p](#nowhere)", "no heading #nowhere"),
])
def test_the_link_check_catches_a_missing_file_or_anchor(tmp_path, link, fault):
    page = _tree(tmp_path, f"# T\n\n## Here, too\n\nSee {link}; `[not](a-link.md)`; [w](https://x.org/y.md).\n")
    problems = broken_links(page, str(tmp_path))
    assert len(problems) == 1 and fault in problems[0], problems
    ok = link.replace("pages.md", "page.md").replace("two-word", "two-words").replace("nowhere", "here-too")
    (tmp_path / "README.md").write_text(f"# T\n\n## Here, too\n\nSee {ok}.\n")
    assert broken_links(page, str(tmp_path)) == []


def test_the_example_runner_fails_on_an_example_that_raises_or_leans_on_another(tmp_path):
    page = _tree(tmp_path, f"# T\n\n{FENCE}python\nx = 1\n{FENCE}\n\n{FENCE}text\nnot run\n{FENCE}\n\n"
                           f"{FENCE}python\nassert 1 == 2, 'this example is wrong'\n{FENCE}\n")
    with pytest.raises(AssertionError, match="this example is wrong") as caught:
        run_examples(page, str(tmp_path))
    assert "python block 2, line 12" in "".join(e.frame.code.raw.co_filename for e in caught.traceback)
    # A reader copies one block: a name only an earlier block defines is an error.
    (tmp_path / "README.md").write_text(f"{FENCE}python\nx = 2\n{FENCE}\n{FENCE}python\nprint(x)\n{FENCE}\n")
    with pytest.raises(NameError, match="'x' is not defined"):
        run_examples(page, str(tmp_path))
    (tmp_path / "README.md").write_text(f"{FENCE}python\nx = 2\n{FENCE}\n{FENCE}python\nx = 3\nprint(x)\n{FENCE}\n")
    run_examples(page, str(tmp_path))
