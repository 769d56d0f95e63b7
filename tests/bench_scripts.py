"""bench/ scripts loaded as modules by the tests that check them."""

import contextlib
import importlib.util
import os

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def loaded(name: str):
    """bench/<name>.py as a module; the flags it defines on absl's global FLAGS are removed afterwards, so
    two scripts defining the same flag (--json_out) can be tested in one process, one after the other."""
    before = set(flags.FLAGS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for flag in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, flag)
