"""The one way every tool writes a file: to a temporary name in the same folder, then renamed.

A reader never sees half a file, and a killed or failed run leaves the previous file (or none)
under the final name. `durable=True` also flushes the data to disk before the rename, for results
another process reads (shards, models, predictions), so a machine crash cannot leave a final-named
file with missing bytes.

The same holds for bucket URLs (`gs://...`, through `contracts.storage`): the temporary object gets
a random name, since workers on different machines may share a process id, and the rename is a
copy and a delete, under which the final object still appears whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from typing import Any, Iterator

from contracts import storage

TEMP_PREFIX = ".partial-"  # temporary files start with it; a rerun may delete stale ones


@contextlib.contextmanager
def atomic_path(path: str, *, durable: bool = True) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it to `path` when the block succeeds.

    The block writes the temporary path itself (any library that takes a file name, or
    `contracts.storage.open_binary` for a URL). On an exception the temporary file is removed and
    `path` is left as it was.
    """
    if storage.is_url(path):
        with _atomic_url(path) as tmp:
            yield tmp
        return
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")
    try:
        yield tmp
        if durable and os.path.isfile(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def _atomic_url(path: str) -> Iterator[str]:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    tmp = storage.join(storage.dirname(path), f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")
    try:
        yield tmp
        storage.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if storage.exists(tmp):
                storage.remove(tmp)
        raise


def write_bytes(path: str, data: bytes, *, durable: bool = True) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_path(path, durable=durable) as tmp, storage.open_binary(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str, *, durable: bool = True) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"), durable=durable)


def json_ready(value: Any) -> Any:
    """Returns `value` with every non-finite float replaced by None: JSON has no NaN (an undefined
    metric, such as the AUROC of a one-class split, is written as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_json(path: str, value: Any, *, durable: bool = True) -> None:
    """Writes `value` as indented JSON (NaN and infinities as null) to `path` atomically.

    Keys keep their order (a report lists its models in the order given).
    """
    write_text(path, json.dumps(json_ready(value), indent=2) + "\n", durable=durable)
