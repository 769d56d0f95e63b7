"""The command-line layer: `run(Config, main, __doc__)` generates absl flags from a tool's config,
answers --help, refuses renamed names and stray arguments and calls `main(config)`; a UserInputError
or OSError becomes `<tool>: <message>` (settings spelled as flags) and exit 1. No TensorFlow here.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, Callable, Collection

from absl import flags

from contracts import settings

HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-?")
# TensorFlow's C++ log level when the user set none: 1 drops its start-up INFO lines and keeps
# every warning and error (docs/tools.md, "What TensorFlow prints at start-up").
QUIET_TF_LOG_LEVEL = "1"
_DEFINERS = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
             bool: flags.DEFINE_bool}
_MULTI_DEFINERS = {str: flags.DEFINE_multi_string, int: flags.DEFINE_multi_integer,
                   float: flags.DEFINE_multi_float}


def define_flags(config_type: type, fv: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag in `fv` per command-line setting of `config_type`."""
    for name, (field, spec, hint) in settings.specs(config_type).items():
        if not spec.flag:
            continue
        kind, repeated = settings.base_type(hint)
        default = settings.default(field)
        default = None if default is settings.REQUIRED else default
        if repeated:
            default = list(default) if default else None
        args: dict[str, Any] = dict(name=name, default=default, help=settings.text(spec.help), flag_values=fv)
        if spec.choices is not None:
            define = flags.DEFINE_multi_enum if repeated else flags.DEFINE_enum
            args["enum_values"] = list(spec.choices)
        else:
            define = (_MULTI_DEFINERS if repeated else _DEFINERS)[kind]
            if kind in (int, float):
                args.update(lower_bound=spec.lower, upper_bound=spec.upper)
        define(**args)


def required(config_type: type) -> list[str]:
    """The flags without a default."""
    return [name for name, (field, spec, _) in settings.specs(config_type).items()
            if spec.flag and settings.default(field) is settings.REQUIRED]


def config_from_flags(config_type: type, fv: flags.FlagValues = flags.FLAGS, **given: Any) -> Any:
    """The config the parsed flags describe (`given` fills settings that have no flag)."""
    values = dict(given)
    for name, (_, spec, hint) in settings.specs(config_type).items():
        if spec.flag:
            value = fv[name].value
            values[name] = tuple(value or ()) if settings.base_type(hint)[1] else value
    return config_type(**values)


def run(config_type: type, main: Callable[[Any], Any], doc: str | None,
        renamed: dict[str, str] | None = None, stop_on_sigterm: bool = True) -> None:
    """What every entry point does: flags from `config_type`, --help, one-line errors, `main(config)`.

    `renamed` maps old flag names to what replaced them: an old name fails in one line.
    `stop_on_sigterm=False` keeps Python's default SIGTERM (a tool blocked inside C++).
    """
    from absl import app

    tool = os.path.basename(sys.argv[0])
    exit_on_renamed(sys.argv, renamed or {}, tool)
    define_flags(config_type)
    exit_on_help(sys.argv, doc)
    exit_on_joined_choices(sys.argv, flags.FLAGS, tool)
    flags.mark_flags_as_required(required(config_type))
    names = [name for name, (_, spec, _) in settings.specs(config_type).items() if spec.flag]
    app.run(lambda argv: guarded_main(lambda: main(config_from_flags(config_type)), argv, stop_on_sigterm,
                                      names))


def given(config_type: type, fv: flags.FlagValues = flags.FLAGS) -> frozenset[str]:
    """The settings of `config_type` whose flag was on the command line."""
    return frozenset(name for name, (_, spec, _) in settings.specs(config_type).items()
                     if spec.flag and fv[name].present)


def flag_spelling(message: str, names: Collection[str]) -> str:
    """`name=value` of a setting in a message from below becomes the flag `--name=value`."""
    if not names:
        return message
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.sub(rf"(?<![\w\-./])({alternatives})=", r"--\1=", message)


def exit_on_help(argv: list[str], doc: str | None) -> None:
    """On --help prints the tool's usage and flags and exits 0 (absl's exits 1, listing none of them)."""
    if not any(arg in HELP_FLAGS for arg in argv[1:]):
        return
    print((doc or "").strip() + "\n")
    print(flags.FLAGS.module_help(__name__))  # the flags define_flags made, as absl spells them
    print("\nabsl's and TensorFlow's own flags: --helpfull")
    raise SystemExit(0)


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


def _raise_stopped(signum, frame) -> None:
    del frame
    raise _Stopped(signum)


def guarded_main(call: Callable[[], Any], argv: list[str], stop_on_sigterm: bool = True,
                 names: Collection[str] = ()) -> Any:
    """Runs `call` under the rule for bad input: one line `<tool>: <what and the fix>` on stderr and
    exit 1, no traceback, the settings `names` spelled as flags. Refuses stray arguments. Ctrl-C and
    SIGTERM end it in one line too, after its clean-up has run."""
    from contracts.errors import UserInputError, describe_os_error

    tool = os.path.basename(argv[0])
    if len(argv) > 1:
        sys.exit(f"{tool}: unexpected arguments {' '.join(argv[1:])!r}; every option is a "
                 "--name=value flag (--help lists them)")
    # Before TensorFlow loads, unless the user set it: all of its INFO lines under --verbosity >= 1.
    verbose = flags.FLAGS["verbosity"].value > 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else QUIET_TF_LOG_LEVEL)
    if stop_on_sigterm:
        signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        return call()
    except UserInputError as err:
        sys.exit(f"{tool}: {flag_spelling(str(err), names)}")
    except OSError as err:  # a file the user named could not be read or written
        sys.exit(f"{tool}: {describe_os_error(err)}")
    except (KeyboardInterrupt, _Stopped) as err:  # said last: progress bars have closed by now
        signum = err.signum if isinstance(err, _Stopped) else signal.SIGINT
        print(f"{tool}: stopped by {signal.Signals(signum).name}; its temporary and unfinished files "
              "were removed", file=sys.stderr)
        raise SystemExit(128 + signum) from None
