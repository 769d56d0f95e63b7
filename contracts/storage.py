"""Paths local or a URL (any `tf.io.gfile` scheme); local paths never import TensorFlow."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from typing import IO, Any, Callable, Iterator


def is_url(path: str) -> bool:
    """Whether `path` names a filesystem by its scheme (`gs://...`, `ram://...`)."""
    scheme, separator, _ = str(path).partition("://")
    return bool(separator) and scheme.isidentifier()


@contextlib.contextmanager
def _gfile(path: str) -> Iterator[Any]:
    import tensorflow as tf

    try:
        yield tf.io.gfile
    except tf.errors.OpError as err:
        error, number = {tf.errors.NotFoundError: (FileNotFoundError, errno.ENOENT),
                         tf.errors.PermissionDeniedError: (PermissionError, errno.EACCES)}.get(
            type(err), (OSError, errno.EIO))
        message = next(iter((err.message or "").splitlines()), "") or type(err).__name__
        raise error(number, message, path) from None


def _either(path: str, local: Callable[[], Any], remote: Callable[[Any], Any]) -> Any:
    if not is_url(path):
        return local()
    with _gfile(path) as gfile:
        return remote(gfile)


def join(folder: str, *names: str) -> str:
    """`os.path.join` for local folders; "/"-joined for URLs (whatever the local separator)."""
    return os.path.join(folder, *names) if not is_url(folder) else "/".join([folder.rstrip("/"), *names])


def dirname(path: str) -> str:
    """The folder holding `path` (a URL's parent keeps its scheme)."""
    return os.path.dirname(path) if not is_url(path) else path.rstrip("/").rsplit("/", 1)[0]


def abspath(path: str) -> str:
    return path if is_url(path) else os.path.abspath(path)


def relpath(path: str, start: str) -> str:
    """`path` relative to the folder `start`, with "/" separators."""
    if not is_url(path):
        return os.path.relpath(path, start).replace(os.sep, "/")
    return path[len(start.rstrip("/")) + 1:]


def exists(path: str) -> bool:
    return _either(path, lambda: os.path.exists(path), lambda g: g.exists(path))


def isdir(path: str) -> bool:
    return _either(path, lambda: os.path.isdir(path), lambda g: g.isdir(path))


def isfile(path: str) -> bool:
    return _either(path, lambda: os.path.isfile(path), lambda g: g.exists(path) and not g.isdir(path))


def size(path: str) -> int:
    return _either(path, lambda: os.path.getsize(path), lambda g: g.stat(path).length)


def listdir(path: str) -> list[str]:
    """The names in a folder (a URL's sub-folders without their trailing "/")."""
    return _either(path, lambda: os.listdir(path), lambda g: [n.rstrip("/") for n in g.listdir(path)])


def makedirs(path: str) -> None:
    _either(path, lambda: os.makedirs(path, exist_ok=True), lambda g: g.makedirs(path))


def remove(path: str) -> None:
    _either(path, lambda: os.remove(path), lambda g: g.remove(path))


def rmtree(path: str) -> None:
    _either(path, lambda: shutil.rmtree(path), lambda g: g.rmtree(path))


def rename(source: str, target: str) -> None:
    """Renames `source` to `target`, replacing it (on a bucket a copy, whole once visible, and a delete)."""
    _either(target, lambda: os.replace(source, target), lambda g: g.rename(source, target, overwrite=True))


@contextlib.contextmanager
def open_binary(path: str, mode: str = "rb") -> Iterator[IO[bytes]]:
    if not is_url(path):
        with open(path, mode) as f:
            yield f
        return
    with _gfile(path) as gfile, gfile.GFile(path, mode) as f:
        yield f


def read_bytes(path: str, limit: int | None = None) -> bytes:
    with open_binary(path) as f:
        return f.read() if limit is None else f.read(limit)


def read_json_or_none(path: str) -> Any:
    """A local JSON file's value; None when it is absent, unreadable or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def walk(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` over a URL, top down (buckets have no links, so nothing is reached twice)."""
    with _gfile(top) as gfile:
        for folder, dirs, files in gfile.walk(top):
            yield folder.rstrip("/"), [d.rstrip("/") for d in dirs], files


def glob(pattern: str) -> list[str]:
    """The paths matching a URL pattern (`*`, `?`, `[...]` within one folder level)."""
    with _gfile(pattern) as gfile:
        return sorted(gfile.glob(pattern))
