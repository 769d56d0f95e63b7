"""The install is the tested install: bounded dependencies, pins inside the bounds, no test or Beam
packages for a user, and a Makefile that installs each extras set once. No TensorFlow here."""

import configparser
import importlib.metadata
import os
import shutil
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = "cxr-classifiers"
# What a user's install must never pull in: the `dev` extra's business.
DEV_ONLY = {"apache-beam", "pytest", "pytest-timeout", "pyjpegls"}
LOWER_OPS = {">=", ">", "==", "~=", "==="}
UPPER_OPS = {"<", "<=", "==", "~=", "==="}


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    return config


def _requirements(value: str) -> list[Requirement]:
    return [Requirement(line) for line in value.splitlines() if line.strip()]


def _runtime() -> list[Requirement]:
    return _requirements(_setup_cfg()["options"]["install_requires"])


def _extra(name: str) -> list[Requirement]:
    return _requirements(_setup_cfg()["options.extras_require"][name])


def _bounded() -> list[Requirement]:
    """install_requires and the test and Beam extras; the project's own extras and the `gpu`
    extra (resolved against install_requires' pin) carry no version of their own."""
    extras = [r for r in _extra("dev") + _extra("beam") if canonicalize_name(r.name) != PROJECT]
    return _runtime() + extras


def _constraints() -> dict[str, str]:
    pins = {}
    with open(os.path.join(REPO, "constraints.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, sep, version = line.strip().partition("==")
                assert sep and version and " " not in line.strip(), f"constraints.txt: {line!r} is not name==version"
                pins[canonicalize_name(name)] = version
    return pins


def _missing_bounds(requirements: list[Requirement]) -> list[str]:
    missing = []
    for req in requirements:
        ops = {spec.operator for spec in req.specifier}
        if not ops & LOWER_OPS:
            missing.append(f"{req}: no lower bound")
        if not ops & UPPER_OPS:
            missing.append(f"{req}: no upper bound")
    return missing


def test_every_dependency_has_a_lower_and_an_upper_bound():
    assert _missing_bounds(_bounded()) == []
    assert {canonicalize_name(r.name) for r in _extra("gpu")} <= {canonicalize_name(r.name) for r in _runtime()}


def test_the_bound_check_itself_catches_an_open_end():
    assert _missing_bounds([Requirement("numpy>=2"), Requirement("numpy<3"), Requirement("numpy==2.4.*")]) \
        == ["numpy>=2: no upper bound", "numpy<3: no lower bound"]


def test_constraints_pin_every_dependency_inside_its_bounds_and_not_the_project():
    pins = _constraints()
    outside = [f"{req}: pinned {pins.get(canonicalize_name(req.name), 'nowhere')}" for req in _bounded()
               if not req.specifier.contains(pins.get(canonicalize_name(req.name), "0.dev0"), prereleases=True)]
    assert outside == []
    assert PROJECT not in pins


def test_constraints_are_sorted_by_name_so_a_refresh_diffs_cleanly():
    with open(os.path.join(REPO, "constraints.txt")) as f:
        names = [line.split("==")[0] for line in f if line.strip() and not line.startswith("#")]
    assert names == sorted(names, key=str.upper)  # the Makefile's `LC_ALL=C sort --ignore-case`


def _closure(names: set[str]) -> set[str]:
    """The installed distributions `names` pull in (no extras), found through their metadata."""
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_a_user_install_holds_no_test_or_beam_package():
    runtime = {canonicalize_name(r.name) for r in _runtime()}
    assert runtime & DEV_ONLY == set()
    assert _closure(runtime) & DEV_ONLY == set()


def test_python_requires_admits_no_python_a_dependency_refuses():
    oldest = min(Version(s.version) for s in SpecifierSet(_setup_cfg()["options"]["python_requires"]))
    refusing = {}
    for name in _closure({r.name for r in _runtime()}):
        needs = importlib.metadata.metadata(name)["Requires-Python"]
        if needs and not SpecifierSet(needs).contains(oldest):
            refusing[name] = needs
    assert refusing == {}


def _make_dry_run(target: str, venv: str, stamp: str | None, **variables: str) -> str:
    """What `make -n TARGET` would install into `venv`, whose stamp (if any) is newer than its inputs."""
    if stamp is not None:
        os.makedirs(venv, exist_ok=True)
        path = os.path.join(venv, stamp)
        open(path, "w").close()
        newest = max(os.path.getmtime(os.path.join(REPO, f)) for f in ("setup.cfg", "pyproject.toml", "constraints.txt"))
        os.utime(path, (newest + 60, newest + 60))
    env = {k: v for k, v in os.environ.items() if k not in ("GPU", "DEV", "MAKEFLAGS", "MAKELEVEL")}
    args = ["make", "-n", "-C", REPO, target, f"VENV={venv}", *(f"{k}={v}" for k, v in variables.items())]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=True)
    installs = [line for line in done.stdout.splitlines() if " -m pip install " in line and "--upgrade pip" not in line]
    assert all("-c constraints.txt" in line for line in installs), installs
    return " ".join(line.split(" -e ")[1].split()[0] for line in installs)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize("target, stamp, variables, installs", [
    ("install", None, {}, "'.'"),                     # a user's install: no extras
    ("demo", None, {}, "'.'"),
    ("install", None, {"DEV": "1"}, "'.[dev]'"),
    ("test", None, {}, "'.[dev]'"),
    ("bench", None, {}, "'.[dev]'"),
    ("test", ".installed", {}, "'.[dev]'"),           # a plain venv gains the test extras
    ("demo", ".installed", {}, ""),
    ("demo", ".installed-dev", {}, ""),               # and keeps them: no reinstall either way
    ("install", ".installed-dev", {}, ""),
    ("test", ".installed-dev", {}, ""),
    ("install", None, {"GPU": "1"}, "'.[gpu]'"),
    ("test", ".installed-gpu", {}, "'.[dev,gpu]'"),   # a GPU venv keeps its GPU extra
    ("demo", ".installed-gpu-dev", {}, ""),
])
def test_make_installs_each_extras_set_once_at_the_pinned_versions(tmp_path, target, stamp, variables, installs):
    assert _make_dry_run(target, str(tmp_path / "venv"), stamp, **variables) == installs
