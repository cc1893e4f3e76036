"""Typed, frozen dataclass configs filled from TOML files and CLI overrides.

A config file is TOML with one table per dataclass section, e.g.::

    [data]
    name = "fashion-mnist"
    [classifier]
    model = "small-cnn"
    epochs = 15

``build(cls, mapping)`` turns a mapping into the dataclass ``cls`` and rejects unknown keys and
values of the wrong type with an error naming the key; ``asdict`` gives back plain types for
saving inside checkpoints and next to results.

Strictness: a typo never runs with defaults. :data:`SECTIONS` lists every table a pssr config may
hold (one dataclass each); :func:`load_config` rejects a table no command knows, a key its dataclass
lacks and a ``--set`` override naming either, or naming a table the command at hand does not read,
each time suggesting the closest valid name. A table that another command reads is fine: the
shipped configs hold the tables of several commands.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


# scalar type -> (accepts the value?, what the error says was expected, conversion)
_SCALARS: dict[Any, tuple[Any, str, Any]] = {
    float: (lambda v: not isinstance(v, bool) and isinstance(v, (int, float)), "a number", float),
    int: (lambda v: not isinstance(v, bool) and isinstance(v, int), "an integer", lambda v: v),
    bool: (lambda v: isinstance(v, bool), "true or false", lambda v: v),
    str: (lambda v: isinstance(v, str), "a string", lambda v: v),
}


def _check_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for a in args:
        if a is type(None):
            continue
        try:
            return _check_type(value, a, key)
        except ConfigError:
            continue
    raise ConfigError(f"{key}: {value!r} matches none of {tp}")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (and converted: int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _check_union(value, tp, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        vals = [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(vals) if origin is tuple else vals
    if origin is dict or dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value) if origin is dict else build(tp, value, prefix=key + ".")
    if tp in _SCALARS:
        ok, expected, convert = _SCALARS[tp]
        if not ok(value):
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        return convert(value)
    return value


def build(cls: type[T], mapping: dict[str, Any] | None, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``mapping``; unknown keys and wrong types raise ConfigError."""
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}"
            f"{did_you_mean(unknown[0], names, prefix)}; allowed: {', '.join(sorted(names))}"
        )
    kwargs = {k: _check_type(v, hints[k], prefix + k) for k, v in mapping.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e


def asdict(cfg: Any) -> dict[str, Any]:
    """Plain-typed dict (tuples become lists) safe for JSON and ``torch.save``."""

    def conv(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"classifier.epochs=3"`` -> (["classifier", "epochs"], 3); values parse as TOML, else string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(mapping: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in mapping.items()}
    for o in overrides:
        path, value = parse_override(o)
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"override {o!r}: {p} is not a table")
        d[path[-1]] = value
    return out


# ----------------------------------------------------------------------------------------------
# Strict configuration: which tables exist, which command reads which
# ----------------------------------------------------------------------------------------------
# command -> {table: "module:Class" of the dataclass it fills}; the last table is the command's own.
# Classes are imported only when a config is checked, so this module imports no training code. Every
# table a pssr config may hold appears here: a table of another command is fine in a file, a table of
# no command is a typo.
COMMAND_SECTIONS: dict[str, dict[str, str]] = {
    "pssr train-classifier": {
        "data": "pssr.experiments.data:DataConfig",
        "classifier": "pssr.train.classifier:ClassifierConfig",
    },
    "pssr train-adversarial": {
        "data": "pssr.experiments.data:DataConfig",
        "adv_train": "pssr.train.adversarial:AdvTrainConfig",
    },
    "pssr train-pssr": {
        "data": "pssr.experiments.data:DataConfig",
        "pssr": "pssr.defense.pssr:PSSRConfig",
        "run": "pssr.experiments.pssr_train:PSSRRunConfig",
    },
    "pssr train-denoiser": {
        "data": "pssr.experiments.data:DataConfig",
        "denoise": "pssr.train.denoise:DenoiseConfig",
        "run": "pssr.experiments.denoise:DenoiseRunConfig",
    },
}


def _sections() -> dict[str, list[str]]:
    """table -> the dataclasses that read it ([run] is the run table of two commands)."""
    out: dict[str, list[str]] = {}
    for tables in COMMAND_SECTIONS.values():
        for table, target in tables.items():
            if target not in out.setdefault(table, []):
                out[table].append(target)
    return out


SECTIONS: dict[str, list[str]] = _sections()


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "", suffix: str = "") -> str:
    """``" (did you mean PREFIX+closest+SUFFIX?)"`` for the closest of ``choices`` (difflib), else ``""``."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}{suffix}?)" if close else ""


def _fields(target: str) -> set[str] | None:
    module, _, cls = target.partition(":")
    try:
        return {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    except (ImportError, AttributeError):  # a command of a partial installation: its keys are not checked
        return None


def section_keys(section: str, command: str | None = None) -> set[str] | None:
    """The keys table ``[section]`` may hold: the fields of the dataclass ``command`` fills from it,
    or (no command) of every dataclass that reads it; None when they cannot be imported."""
    targets = [COMMAND_SECTIONS[command][section]] if command is not None else SECTIONS[section]
    found = [f for f in map(_fields, targets) if f is not None]
    return set().union(*found) if found else None


def _unknown_section(name: str, where: str) -> ConfigError:
    hint = did_you_mean(name, SECTIONS, "[", "]")
    owners = [s for s in SECTIONS if name in (section_keys(s) or ())]
    if not hint and owners:  # a key written outside its table
        hint = f" ({name} is a key of [{'] / ['.join(owners)}])"
    return ConfigError(f"{where}: unknown section [{name}]{hint}; known sections: {', '.join(SECTIONS)}")


def check_sections(mapping: dict[str, Any], source: str = "config") -> None:
    """ConfigError for a table no pssr command knows, a top-level key outside any table, or a key
    that no dataclass reading its table has (values are checked by the command that reads it)."""
    for name, table in mapping.items():
        if name not in SECTIONS:
            raise _unknown_section(name, source)
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a [{name}] table, got {table!r}")
        keys = section_keys(name)
        unknown = sorted(set(table) - keys) if keys is not None else []
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {name}.{unknown[0]} in [{name}]{did_you_mean(unknown[0], keys, name + '.')}"
                f"; allowed: {', '.join(sorted(keys))}"
            )


def check_overrides(overrides: Sequence[str], command: str | None = None) -> None:
    """ConfigError unless every ``section.key=value`` names a known table (one that ``command``, a key
    of :data:`COMMAND_SECTIONS`, reads, when given) and a key of it."""
    reads = list(COMMAND_SECTIONS[command]) if command is not None else list(SECTIONS)
    for text in overrides:
        path, _ = parse_override(text)
        where = f"--set {text}"
        if len(path) < 2:
            owners = [s for s in reads if path[0] in (section_keys(s, command) or ())]
            hint = f" (did you mean {owners[0]}.{path[0]}?)" if owners else ""
            raise ConfigError(f"{where}: an override looks like section.key=value{hint}")
        section, key = path[0], path[1]
        if section not in SECTIONS:
            raise _unknown_section(section, where)
        if section not in reads:
            raise ConfigError(
                f"{where}: {command} reads [{'], ['.join(reads)}], not [{section}]; the override would "
                "have no effect"
            )
        keys = section_keys(section, command)
        if keys is not None and key not in keys:
            raise ConfigError(
                f"{where}: [{section}] has no key {key}{did_you_mean(key, keys, section + '.')}; "
                f"allowed: {', '.join(sorted(keys))}"
            )


def load_config(
    path: str | Path, overrides: Sequence[str] = (), command: str | None = None, requires: str | None = None
) -> dict[str, Any]:
    """A TOML config checked strictly (:func:`check_sections`, :func:`check_overrides` for
    ``command``) with the overrides applied. ``requires``: a table the file must hold (the command's
    own, so that a config written for another command is not run with defaults)."""
    mapping = load_toml(path)
    check_sections(mapping, source=str(path))
    if requires is not None and requires not in mapping:
        owners = [c for c, t in COMMAND_SECTIONS.items() if list(t)[-1] in mapping and c != command]
        hint = f" (it looks like a config for {' or '.join(owners)})" if owners else ""
        raise ConfigError(
            f"{path} has no [{requires}] table, which {command or 'this command'} needs{hint}; its tables: "
            f"[{'], ['.join(mapping) or 'none'}]"
        )
    check_overrides(overrides, command)
    return apply_overrides(mapping, list(overrides))
