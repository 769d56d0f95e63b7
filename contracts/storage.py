"""Paths that may be local or a bucket URL: the one place that decides which filesystem serves them.

A path with a scheme (`gs://bucket/nih`, TensorFlow's in-memory `ram://`) goes through
`tf.io.gfile`, which TensorFlow 2.21 registers for `file`, `ram` and `gs`; `s3://` and `hdfs://`
would need tensorflow-io's filesystem plugins, whose last release targets TensorFlow 2.16. Every
other path is a local one and keeps the plain `os` calls (symbolic links, permissions, fsync), so
local builds behave exactly as before. TensorFlow is imported only when a URL comes, so a local
build's worker processes stay light.

Failures on a URL are raised as `OSError` naming the path, like the local calls, so the tools' one
rule for bad input (`flags.run_tool`: one line, exit 1) covers both.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import IO, Iterator

SCHEME_SEPARATOR = "://"


def is_url(path: str) -> bool:
    """Whether `path` names a filesystem by its scheme (`gs://...`, `ram://...`)."""
    scheme, separator, _ = str(path).partition(SCHEME_SEPARATOR)
    return bool(separator) and scheme.isidentifier()


@contextlib.contextmanager
def _as_os_error(path: str) -> Iterator[None]:
    import tensorflow as tf

    try:
        yield
    except tf.errors.NotFoundError as err:
        raise FileNotFoundError(errno.ENOENT, _first_line(err, "not found"), path) from None
    except tf.errors.PermissionDeniedError as err:
        raise PermissionError(errno.EACCES, _first_line(err, "permission denied"), path) from None
    except tf.errors.OpError as err:
        raise OSError(errno.EIO, _first_line(err, type(err).__name__), path) from None


def _first_line(err, fallback: str) -> str:
    return next(iter((err.message or "").splitlines()), "") or fallback


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(folder: str, *names: str) -> str:
    """`os.path.join` for local folders; "/"-joined for URLs (whatever the local separator)."""
    if not is_url(folder):
        return os.path.join(folder, *names)
    return "/".join([folder.rstrip("/"), *names])


def dirname(path: str) -> str:
    """The folder holding `path` (a URL's parent keeps its scheme)."""
    if not is_url(path):
        return os.path.dirname(path)
    return path.rstrip("/").rsplit("/", 1)[0]


def relpath(path: str, start: str) -> str:
    """`path` relative to the folder `start`, with "/" separators."""
    if not is_url(path):
        return os.path.relpath(path, start).replace(os.sep, "/")
    prefix = start.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path} is not under {start}")
    return path[len(prefix):]


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    with _as_os_error(path):
        return _gfile().exists(path)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    with _as_os_error(path):
        return _gfile().isdir(path)


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    with _as_os_error(path):
        return _gfile().exists(path) and not _gfile().isdir(path)


def size(path: str) -> int:
    """The file's size in bytes."""
    if not is_url(path):
        return os.path.getsize(path)
    with _as_os_error(path):
        return _gfile().stat(path).length


def listdir(path: str) -> list[str]:
    """The names in a folder (a URL's sub-folders without their trailing "/")."""
    if not is_url(path):
        return os.listdir(path)
    with _as_os_error(path):
        return [name.rstrip("/") for name in _gfile().listdir(path)]


def makedirs(path: str) -> None:
    if not is_url(path):
        os.makedirs(path, exist_ok=True)
        return
    with _as_os_error(path):
        _gfile().makedirs(path)


def remove(path: str) -> None:
    if not is_url(path):
        os.remove(path)
        return
    with _as_os_error(path):
        _gfile().remove(path)


def rmtree(path: str) -> None:
    if not is_url(path):
        shutil.rmtree(path)
        return
    with _as_os_error(path):
        _gfile().rmtree(path)


def rename(source: str, target: str) -> None:
    """Renames `source` to `target`, replacing it. On a bucket this is a copy and a delete: the
    object under `target` still appears whole, since an object is only visible once written."""
    if not is_url(target):
        os.replace(source, target)
        return
    with _as_os_error(source):
        _gfile().rename(source, target, overwrite=True)


@contextlib.contextmanager
def open_binary(path: str, mode: str = "rb") -> Iterator[IO[bytes]]:
    """Opens `path` for binary reading ("rb") or writing ("wb")."""
    if not is_url(path):
        with open(path, mode) as f:
            yield f
        return
    with _as_os_error(path), _gfile().GFile(path, mode) as f:
        yield f


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """The whole file, or its first `limit` bytes."""
    with open_binary(path) as f:
        return f.read() if limit is None else f.read(limit)


def walk(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` over a URL: (folder, sub-folder names, file names), top down. Buckets have no
    links, so nothing is reached twice. Local folders are walked by the caller (see
    `preprocess.sources.scan_images`, which follows links and ends cycles)."""
    with _as_os_error(top):
        for folder, dirs, files in _gfile().walk(top):
            yield folder.rstrip("/"), [d.rstrip("/") for d in dirs], files


def glob(pattern: str) -> list[str]:
    """The paths matching a URL pattern (`*`, `?`, `[...]` within one folder level)."""
    with _as_os_error(pattern):
        return sorted(_gfile().glob(pattern))
