"""YAML configs with ``--set key=value`` overrides, into nested dataclasses.

Every experiment setting is a dataclass field with a default and a one-line comment; a
YAML file overrides some of them, and ``--set section.field=value`` overrides the file.
Unknown keys are errors that list the valid ones, so a typo never silently falls back to
a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'a.b=3'`` -> ``(['a', 'b'], 3)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key=value, e.g. --set method.alpha=4")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def from_dict(cls: type[T], data: dict | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclass fields."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kind = _dataclass_type(hints[name])
        if kind is not None and isinstance(value, dict):
            kwargs[name] = from_dict(kind, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    return cls(**kwargs)


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (tuple,) and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # YAML 1.1 reads exponent-only numbers such as 1e-4 as strings.
    if isinstance(value, str) and (hint is float or float in typing.get_args(hint)):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if hint in (int, float, str, bool) and value is not None and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping of settings")
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data, "config")
    except ValueError as err:
        if path is None:
            raise
        source = f"{path} with --set overrides" if overrides else str(path)
        raise ValueError(f"{source}: {err}") from None


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_resolved(obj: Any, path: str | Path) -> None:
    """Write the resolved config (after file and overrides) next to a run's outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(obj)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        path.write_text(json.dumps(data, indent=2))
