"""The one way every tool writes a file: to a temporary name in the same folder, then renamed.

A reader never sees half a file, and a killed or failed run leaves the previous file (or none)
under the final name. `durable=True` also flushes the data to disk before the rename, for results
another process reads (shards, models, predictions), so a machine crash cannot leave a final-named
file with missing bytes.

The same holds for bucket URLs (`gs://...`, through `contracts.storage`): the temporary object gets
a random name, since workers on different machines may share a process id, and the rename is a
copy and a delete, under which the final object still appears whole.

A run that writes several files (predict.py: one CSV, sidecar and .npy per model, a report) wraps
them in `all_or_none()`: when it fails part way, none of the files it wrote stays behind, and the
files they replaced are put back.
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

# The open all_or_none() block's files so far: (path written, where the file it replaced waits, or None).
_GROUPS: list[list[tuple[str, str | None]]] = []


@contextlib.contextmanager
def all_or_none() -> Iterator[None]:
    """Keeps the files written through this module inside the block only if the whole block succeeds.

    Each file still appears whole under its final name as soon as it is written, so the block can
    read it back; a file it replaces is kept aside under a temporary name. When the block raises,
    every file it wrote is removed and the files they replaced are put back. A nested block joins
    the outermost one.
    """
    if _GROUPS:
        yield
        return
    written: list[tuple[str, str | None]] = []
    _GROUPS.append(written)
    try:
        yield
    except BaseException:
        _GROUPS.pop()
        for path, previous in reversed(written):
            with contextlib.suppress(OSError):
                storage.remove(path)
            if previous is not None:
                storage.rename(previous, path)
        raise
    _GROUPS.pop()
    for _, previous in written:
        if previous is not None:
            with contextlib.suppress(OSError):
                storage.remove(previous)


def _put_in_place(tmp: str, path: str, previous: str) -> None:
    """Renames `tmp` to `path`; inside `all_or_none()`, first moves a file already at `path` (that
    the block did not write) to `previous` and records both, so that a failure can undo it."""
    if _GROUPS:
        written = _GROUPS[-1]
        if path not in {p for p, _ in written}:
            # A folder in the way is not a previous version: the rename below fails on it as ever.
            kept = previous if storage.exists(path) and not storage.isdir(path) else None
            if kept is not None:
                storage.rename(path, kept)
            written.append((path, kept))
    storage.rename(tmp, path)


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
        _put_in_place(tmp, os.path.abspath(path),
                      os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-previous-{os.path.basename(path)}"))
    except BaseException:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def _atomic_url(path: str) -> Iterator[str]:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    token = uuid.uuid4().hex[:12]
    tmp = storage.join(storage.dirname(path), f"{TEMP_PREFIX}{token}-{name}")
    try:
        yield tmp
        _put_in_place(tmp, path, storage.join(storage.dirname(path), f"{TEMP_PREFIX}{token}-previous-{name}"))
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
