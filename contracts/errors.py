"""Bad user input: the one exception type every entry point turns into one line and exit status 1.

`flags.run_tool` catches `UserInputError` (and `OSError`, which names its file) around every
tool's `main`, prints `<tool>: <message>` without a traceback and exits 1. Outputs are
checked with `check_output_folder` before the long work starts, so a bad location costs nothing,
and with `check_no_overwrite` against the files the run reads, so an output never replaces an input.
"""

from __future__ import annotations

import os
from typing import Iterable


class UserInputError(ValueError):
    """A user's file, folder or flag cannot be used; the message names it and says what to do."""


def repeat_hint(value: str, flag: str, each: str) -> str:
    """The fix to add when `value` names nothing and looks like several joined by commas: every
    flag that takes several values takes them repeated (paths may hold commas).

    Args:
      each: what one value is, e.g. "model" or "file".
    """
    if "," not in value or os.path.exists(value):
        return ""
    return f"; give --{flag} once per {each} (--{flag}=A --{flag}=B), not a comma-separated list"


def check_output_folder(folder: str, flag: str) -> None:
    """Raises unless `folder` is, or can be created as, a folder this process can write into.

    Run it before the work whose results go there. Writes are not attempted: the nearest existing
    ancestor must be a folder (not a file) with write permission.

    Args:
      folder: the output folder ("" means the working directory).
      flag: the flag that named it, e.g. "output" (the message says "--output=...").

    Raises:
      UserInputError: naming the flag, the offending path and the fix.
    """
    given = folder or "."
    probe = os.path.abspath(given)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserInputError(f"--{flag}={given} cannot be created: {probe} is a file, not a folder; "
                             f"choose another --{flag} or move the file away")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserInputError(f"--{flag}={given} is not writable ({probe} denies this user); "
                             f"choose another --{flag} or fix its permissions")


def check_output_file(path: str, flag: str, example: str = "predictions.csv") -> None:
    """`check_output_folder` for a file's folder, and refuses a path that is a folder itself (the
    write would fail only at the end of the run).

    Raises:
      UserInputError: naming the flag, the offending path and the fix.
    """
    if os.path.isdir(path):
        raise UserInputError(f"--{flag}={path} is a folder; give a file name in it, e.g. "
                             f"--{flag}={os.path.join(path, example)}")
    check_output_folder(os.path.dirname(path), flag)


def check_no_overwrite(writes: Iterable[tuple[str, str, str]], reads: Iterable[tuple[str, str]]) -> None:
    """Raises when a file the run would write is a file it reads, before anything is written.

    Paths compare by real path, so a symlink, `./` or another spelling of the same file is caught.

    Args:
      writes: (flag that places it, e.g. "output"; the flag's value; a file written) per output file.
      reads: (who reads it, e.g. "--predictions reads"; the file) per input file.

    Raises:
      UserInputError: naming the flag, the file written and read, and the fix.
    """
    read_by: dict[str, str] = {}
    for who, path in reads:
        read_by.setdefault(os.path.realpath(path), who)
    for flag, given, path in writes:
        who = read_by.get(os.path.realpath(path))
        if who is not None:
            raise UserInputError(f"--{flag}={given} would overwrite {path}, which {who}; an output never "
                                 f"replaces an input: choose another --{flag}")


def describe_os_error(err: OSError) -> str:
    """One line for a failed read or write: which file, what the system said, what to check."""
    if err.filename is None:
        return str(err)
    what = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
    return (f"{what}: {err.strerror or err}; check that the folder exists, is writable and has "
            "free space")
