"""Atomic writes: one file by a rename; files that change together by a journaled `Transaction`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from typing import Any, Iterator

from contracts import storage

TEMP_PREFIX = ".partial-"  # temporary files start with it; a rerun may delete stale ones


def _beside(path: str, prefix: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{TEMP_PREFIX}{prefix}{name}")


def _flush(path: str) -> None:
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str, *, durable: bool = True) -> Iterator[str]:
    """Yields a temporary path beside `path`, renamed to `path` when the block succeeds."""
    if storage.is_url(path):  # a random name: workers on several machines may share a pid
        name = path.rstrip("/").rsplit("/", 1)[-1]
        tmp = storage.join(storage.dirname(path), f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")
    else:
        tmp = _beside(path, f"{os.getpid()}-")
    try:
        yield tmp
        if durable and not storage.is_url(tmp):
            _flush(tmp)
        storage.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if storage.exists(tmp) and not storage.isdir(tmp):
                storage.remove(tmp)
        raise


def write_bytes(path: str, data: bytes, *, durable: bool = True) -> None:
    with atomic_path(path, durable=durable) as tmp, storage.open_binary(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str, *, durable: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), durable=durable)


def json_ready(value: Any) -> Any:
    """`value` with non-finite floats as None: JSON has no NaN (an undefined metric is null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_json(path: str, value: Any, *, durable: bool = True) -> None:
    """Writes `value` as indented JSON (non-finite floats as null, keys in order) atomically."""
    write_text(path, json.dumps(json_ready(value), indent=2) + "\n", durable=durable)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _link_or_copy(source: str, target: str) -> None:
    # A hard link keeps the old bytes: every write here replaces a file by a rename, never in place.
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _settle(journal: str) -> None:
    """Ends a journaled transaction: commits or rolls back its backups; each step may be redone."""
    _remove(journal + ".part")
    try:
        with open(journal, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return
    for path, backup in reversed(state["entries"]):
        _remove(_beside(path, f"{state['pid']}-"))  # an atomic write cut short
        if backup is not None:
            _remove(backup + ".part")
        if state["committed"]:
            if backup is not None:
                _remove(backup)
        elif backup is None:
            _remove(path)
        elif os.path.lexists(backup):
            _remove(path)  # first: a rename onto a hard link of itself does nothing
            os.replace(backup, path)
    os.remove(journal)


class Transaction:
    """Files and folders that change together: after a failure or a SIGKILL, all old or all new.

    Creating it settles a killed run's journal (beside `anchor`). Inside `with tx:` call `guard(path)`
    before changing a path, or write through `path(path)`; nested blocks commit once, at the end.
    """

    def __init__(self, anchor: str):
        self.journal = _beside(anchor, "journal-") + ".json"
        self._token = uuid.uuid4().hex[:8]
        self._entries: list[tuple[str, str | None]] = []
        self._depth = 0
        _settle(self.journal)

    def __enter__(self) -> Transaction:
        self._depth += 1
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._depth -= 1
        if self._depth == 0 and self._entries:
            if kind is None:
                self._save(committed=True)
            self._entries = []
            _settle(self.journal)

    def _save(self, committed: bool = False) -> None:
        os.makedirs(os.path.dirname(self.journal), exist_ok=True)
        with open(self.journal + ".part", "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "committed": committed, "entries": self._entries}, f)
        _flush(self.journal + ".part")
        os.replace(self.journal + ".part", self.journal)

    def guard(self, *paths: str) -> None:
        """Keeps each file or folder as it is now, to be put back if the transaction fails."""
        for path in map(os.path.abspath, paths):
            if any(path == known for known, _ in self._entries):
                continue
            backup = _beside(path, f"{self._token}-") if os.path.lexists(path) else None
            self._entries.append((path, backup))
            self._save()  # journaled before the backup exists, so a rerun also removes a partial one
            if backup is not None:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.copytree(path, backup + ".part", symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(path, backup + ".part")
                os.rename(backup + ".part", backup)

    @contextlib.contextmanager
    def path(self, path: str) -> Iterator[str]:
        """Yields a temporary path (for a file or a folder) renamed to `path` when the block ends."""
        self.guard(path)
        tmp = _beside(path, f"{self._token}-new-")
        self.guard(tmp)  # absent now: removed unless renamed
        try:
            yield tmp
            _flush(tmp)
            if os.path.isdir(tmp) and os.path.isdir(path):
                _remove(path)  # its backup is journaled: a kill here is undone
            os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise
