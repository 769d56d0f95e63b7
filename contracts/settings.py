"""A setting is one dataclass field carrying its default, help and bounds; flags are generated from it.
A name several tools take is one `Shared`, in the module that owns its meaning; each tool's field of
that name is `NAME.field(...)`."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Collection

from contracts.errors import UserInputError

REQUIRED = dataclasses.MISSING  # setting(REQUIRED, ...): no default; the flag must be given
_KEY = "setting"
_SHARED_DEFAULT = object()
Text = str | Callable[[], str]  # a help text, or one computed when the flags are defined (registry lists)


def text(value: Text) -> str:
    return value() if callable(value) else value


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a field says about itself beyond its type and default."""

    help: Text
    choices: Collection[str] | None = None  # a live view (registry keys) follows later registrations
    lower: float | None = None
    upper: float | None = None
    resume_must_match: bool = False  # a run resumed with another value would mix two runs
    shared: Shared | None = None
    flag: bool = True  # False: set from Python only (tests, the library), never from the command line


def setting(default: Any = REQUIRED, help: Text = "", factory: Callable[[], Any] | None = None,
            **spec: Any) -> Any:
    """A dataclass field with `Spec(help, **spec)`; repeated settings are tuples. `factory` makes
    the default when the config is built (a list that follows the registry)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={_KEY: Spec(help, **spec)})
    return dataclasses.field(default=default, metadata={_KEY: Spec(help, **spec)})


@dataclasses.dataclass(frozen=True)
class Shared:
    """One meaning of a setting name that several tools take; `field` gives each tool its field."""

    name: str
    default: Any
    help: Text
    choices: Collection[str] | None = None
    lower: float | None = None
    upper: float | None = None

    def field(self, default: Any = _SHARED_DEFAULT, note: Text = "", **spec: Any) -> Any:
        """This tool's field: the shared meaning with the tool's default (REQUIRED: none), a note on
        what it does here, and `spec` overrides (tighter `lower`/`upper`, `resume_must_match`)."""
        spec = dataclasses.replace(Spec(_joined(self.help, note), self.choices, self.lower, self.upper,
                                        shared=self), **spec)
        return dataclasses.field(default=self.default if default is _SHARED_DEFAULT else default,
                                 metadata={_KEY: spec})


def _joined(help: Text, note: Text) -> Text:
    if callable(help) or callable(note):
        return lambda: f"{text(help)} {text(note)}".strip()
    return f"{help} {note}".strip()


def specs(config_type: type) -> dict[str, tuple[dataclasses.Field, Spec, type]]:
    """name -> (field, spec, type hint) of every setting of `config_type`, in field order; TypeError
    for a field made by a `Shared` of another name."""
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


def default(field: dataclasses.Field) -> Any:
    """The field's default (made by its factory), or REQUIRED."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


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
                raise UserInputError(f"{name}={item!r} is below its minimum {spec.lower:g}")
            if spec.upper is not None and item > spec.upper:
                raise UserInputError(f"{name}={item!r} is above its maximum {spec.upper:g}")


def resume_must_match(config_type: type) -> tuple[str, ...]:
    """The settings a resumed run must share with the run it continues."""
    return tuple(name for name, (_, spec, _) in specs(config_type).items() if spec.resume_must_match)
