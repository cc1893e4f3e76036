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
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
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


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        vals = [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(vals) if origin is tuple else vals
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return build(tp, value, prefix=key + ".")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type[T], mapping: dict[str, Any] | None, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``mapping``; unknown keys and wrong types raise ConfigError."""
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(mapping) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; allowed: {', '.join(sorted(names))}"
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
