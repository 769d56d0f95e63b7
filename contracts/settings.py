"""A setting is one dataclass field carrying its default, help and bounds; flags are generated from it.

A tool's config is a frozen dataclass of `setting(...)` fields; a name several tools take is one
`Shared` definition, owned by the module that owns its meaning, that each tool's field comes from.
`check` enforces choices and bounds, so a config built in Python is held to what a flag would be.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from contracts.errors import UserInputError

REQUIRED = dataclasses.MISSING  # setting(REQUIRED, ...): no default; the flag must be given
_KEY = "setting"


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field says about itself beyond its type and default."""

    help: str
    choices: tuple[str, ...] | None = None
    lower: float | None = None
    upper: float | None = None
    resume_must_match: bool = False  # a run resumed with another value would mix two runs
    shared: Shared | None = None
    flag: bool = True  # False: set from Python only (tests, the library), never from the command line


def setting(default: Any = REQUIRED, help: str = "", **spec: Any) -> Any:
    """A dataclass field with `Spec(help, **spec)`; list defaults are tuples (repeated flags)."""
    return dataclasses.field(default=default, metadata={_KEY: Spec(help, **spec)})


@dataclasses.dataclass(frozen=True)
class Shared:
    """One meaning of a setting name that several tools take; `field` gives each tool its field."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    lower: float | None = None
    upper: float | None = None

    def field(self, default: Any = dataclasses.MISSING, note: str = "", **bounds: Any) -> Any:
        """This tool's field: the shared meaning, with the tool's default and a note on what it does here."""
        spec = Spec(f"{self.help} {note}".strip(), self.choices, bounds.get("lower", self.lower),
                    bounds.get("upper", self.upper), shared=self)
        return dataclasses.field(default=self.default if default is dataclasses.MISSING else default,
                                 metadata={_KEY: spec})


def specs(config_type: type) -> dict[str, tuple[dataclasses.Field, Spec, type]]:
    """name -> (field, spec, base type) of every setting of `config_type`, in field order."""
    hints = typing.get_type_hints(config_type)
    out = {}
    for field in dataclasses.fields(config_type):
        spec = field.metadata.get(_KEY)
        if spec is None:
            continue
        if spec.shared is not None and spec.shared.name != field.name:
            raise TypeError(f"{config_type.__name__}.{field.name} is defined by shared {spec.shared.name!r}")
        out[field.name] = (field, spec, hints[field.name])
    return out


def base_type(hint: Any) -> tuple[type, bool]:
    """(element type, repeated): `int | None` -> (int, False), `tuple[str, ...]` -> (str, True)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return args[0], True
    if len(args) == 1:
        return base_type(args[0])
    return hint, False


def check(config: Any) -> None:
    """Raises UserInputError naming the first setting of `config` outside its choices or bounds."""
    for name, (_, spec, hint) in specs(type(config)).items():
        value = getattr(config, name)
        if value is None:
            continue
        _, repeated = base_type(hint)
        for item in value if repeated else (value,):
            if spec.choices is not None and item not in spec.choices:
                raise UserInputError(f"{name}={item!r} is not one of {', '.join(spec.choices)}")
            if spec.lower is not None and item < spec.lower:
                raise UserInputError(f"{name}={item!r} is below its minimum {spec.lower}")
            if spec.upper is not None and item > spec.upper:
                raise UserInputError(f"{name}={item!r} is above its maximum {spec.upper}")


def resume_must_match(config_type: type) -> tuple[str, ...]:
    """The settings a resumed run must share with the run it continues."""
    return tuple(name for name, (_, spec, _) in specs(config_type).items() if spec.resume_must_match)
