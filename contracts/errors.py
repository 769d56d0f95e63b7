"""`UserInputError`, printed as one line with exit status 1, and the checks on where outputs go."""

from __future__ import annotations

import os
from typing import Iterable


class UserInputError(ValueError):
    """A user's file, folder or setting cannot be used; the message names it and says what to do."""


def repeat_hint(value: str, flag: str, each: str) -> str:
    """The fix to add when `value` names nothing and looks like several values joined by commas."""
    if "," not in value or os.path.exists(value):
        return ""
    return f"; give --{flag} once per {each} (--{flag}=A --{flag}=B), not a comma-separated list"


def check_output_folder(folder: str, flag: str) -> None:
    """Refuses a `folder` ("": here) whose nearest existing ancestor is not a writable folder."""
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
    """`check_output_folder` for a file's folder, refusing a path that is itself a folder."""
    if os.path.isdir(path):
        raise UserInputError(f"--{flag}={path} is a folder; give a file name in it, e.g. "
                             f"--{flag}={os.path.join(path, example)}")
    check_output_folder(os.path.dirname(path), flag)


def check_no_overwrite(writes: Iterable[tuple[str, str, str]], reads: Iterable[tuple[str, str]]) -> None:
    """Refuses a file written (flag, value, file) that the run also reads (who reads it, file)."""
    read_by: dict[str, str] = {}
    for who, path in reads:
        read_by.setdefault(os.path.realpath(path), who)
    for flag, given, path in writes:
        who = read_by.get(os.path.realpath(path))
        if who is not None:
            raise UserInputError(f"--{flag}={given} would overwrite {path}, which {who}; an output never "
                                 f"replaces an input: choose another --{flag}")


def describe_os_error(err: OSError) -> str:
    if err.filename is None:
        return str(err)
    what = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
    return f"{what}: {err.strerror or err}; check that the folder exists, is writable and has free space"
