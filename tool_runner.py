"""How every entry point runs around its flags: defined, --help answered, bad input in one line.

`flags.py` defines every tool's flags and re-exports these functions, so entry points call
`project_flags.run_tool(define, main, __doc__)`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import flags

FLAGS_MODULE = "flags"  # the module whose definitions are the tools' own flags (flags.py)

HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-?")


def exit_on_help(argv: list[str], doc: str | None, fv: flags.FlagValues = flags.FLAGS) -> None:
    """Prints the tool's usage and its own flags (with help and defaults) and exits 0 on --help.

    absl's --help lists only the main module's flags and exits 1; the tools' flags are defined
    here, so each entry point calls this before `app.run`, with nothing heavy imported yet.
    """
    if not any(arg in HELP_FLAGS for arg in argv[1:]):
        return
    print((doc or "").strip())
    print()
    print(fv.module_help(FLAGS_MODULE))
    print("\nabsl's and TensorFlow's own flags: --helpfull")
    raise SystemExit(0)


def run_tool(define, main, doc: str | None, required: tuple[str, ...] = (),
             stop_on_sigterm: bool = True, renamed: dict[str, str] | None = None) -> None:
    """What every entry point does: define its flags, answer --help, require flags, run `main`.

    `renamed` maps the tool's old flag names to what replaced them (flags.RENAMED): an old name
    fails in one line. `stop_on_sigterm=False` keeps Python's default for SIGTERM (the process ends
    at once), for a tool that waits inside a C++ call that never returns to Python (a tf.data
    service server).
    """
    from absl import app

    tool = os.path.basename(sys.argv[0])
    exit_on_renamed(sys.argv, renamed or {}, tool)
    define()
    exit_on_help(sys.argv, doc)
    exit_on_joined_choices(sys.argv, flags.FLAGS, tool)
    if required:
        flags.mark_flags_as_required(list(required))
    flags.adopt_module_key_flags(sys.modules[FLAGS_MODULE])  # --helpshort lists the tool's flags too
    app.run(lambda argv: guarded_main(main, argv, stop_on_sigterm))


def _given(argv: list[str]) -> list[tuple[str, str | None]]:
    """The (name, value) of every --name[=value] argument (value None when given apart or bare)."""
    given = []
    for arg in argv[1:]:
        if arg == "--":  # absl's end of flags
            break
        if arg.startswith("-") and len(arg) > 1:
            name, sep, value = arg.lstrip("-").partition("=")
            given.append((name, value if sep else None))
    return given


def exit_on_renamed(argv: list[str], renamed: dict[str, str], tool: str) -> None:
    """Exits 1 in one line when an argument uses a flag name the tool has renamed."""
    for name, _ in _given(argv):
        old = name[2:] if name.startswith("no") and name[2:] in renamed else name  # --noflag of a bool
        if old in renamed:
            sys.exit(f"{tool}: --{old} is now {renamed[old]}")


def exit_on_joined_choices(argv: list[str], fv: flags.FlagValues, tool: str) -> None:
    """Exits 1 in one line when a repeated choice flag gets several choices joined by commas."""
    for name, value in _given(argv):
        flag = fv[name] if name in fv else None
        if (value and "," in value and isinstance(flag, flags.MultiFlag)
                and isinstance(flag.parser, flags.EnumParser)):
            first, second = value.split(",")[:2]
            sys.exit(f"{tool}: --{name}={value}: give --{name} once per value (--{name}={first} "
                     f"--{name}={second}), not a comma-separated list")


class _Stopped(BaseException):
    """A signal that ends the tool, raised where the tool is, so its clean-up runs on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_on_sigterm() -> None:
    """Makes SIGTERM (a scheduler's kill, `kill PID`) end the tool like Ctrl-C: as an exception, so
    temporary folders are removed and partial files deleted on the way out."""
    def stop(signum, frame):
        del frame
        raise _Stopped(signum)

    signal.signal(signal.SIGTERM, stop)


def guarded_main(main, argv: list[str], stop_on_sigterm: bool = True) -> int | None:
    """Runs `main` under the project's rule for bad input: one line `<tool>: <what and the fix>`
    on stderr and exit status 1, no traceback (contracts/errors.py). Refuses stray arguments.
    Ctrl-C and SIGTERM end it in one line too, after its clean-up has run."""
    from contracts.errors import UserInputError, describe_os_error

    tool = os.path.basename(argv[0])
    if len(argv) > 1:
        sys.exit(f"{tool}: unexpected arguments {' '.join(argv[1:])!r}; every option is a "
                 "--name=value flag (--help lists them)")
    quiet_tensorflow(flags.FLAGS["verbosity"].value)
    if stop_on_sigterm:
        _stop_on_sigterm()
    try:
        return main(argv)
    except UserInputError as err:
        sys.exit(f"{tool}: {err}")
    except OSError as err:  # a file the user named could not be read or written
        sys.exit(f"{tool}: {describe_os_error(err)}")
    except (KeyboardInterrupt, _Stopped) as err:  # said last: progress bars have closed by now
        signum = err.signum if isinstance(err, _Stopped) else signal.SIGINT
        print(f"{tool}: stopped by {signal.Signals(signum).name}; its temporary and unfinished files "
              "were removed", file=sys.stderr)
        raise SystemExit(128 + signum) from None


# TensorFlow's C++ log level when the user set none: 1 drops its start-up INFO lines (CPU
# instruction sets, XLA service banners) and keeps every warning and error; what still prints
# before it can apply is listed in the README ("What TensorFlow prints at start-up").
QUIET_TF_LOG_LEVEL = "1"


def quiet_tensorflow(verbosity: int) -> None:
    """Sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads, unless the user set it: 1, or 0 (all of
    TensorFlow's C++ INFO lines) under absl's --verbosity=1 or more."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbosity > 0 else QUIET_TF_LOG_LEVEL)
