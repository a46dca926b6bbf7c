"""One configuration schema for the YAML file, the ROS parameters and the CLI flags.

A configuration is a tree of dataclasses. Each leaf field is declared with :func:`param`,
which records its documentation, range or choices and whether it may change at run time.
From that single declaration this module derives:

* ``dump_yaml``: the commented YAML file (plain, or wrapped as ``/**: ros__parameters:``),
* ``load_yaml`` / ``from_dict``: validated loading (unknown keys and bad values are errors),
* ``add_cli_args`` / ``apply_cli_args``: ``--group.name VALUE`` flags,
* ``iter_params``: flat dotted names with their specs (the ROS node declares parameters
  from these),
* ``set_value``: a validated change of one dotted parameter.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml

from recon_ros.errors import UserInputError

_META = "recon_param"


@dataclass(frozen=True)
class ParamSpec:
    """What the schema knows about one leaf parameter."""

    name: str  # dotted, e.g. "map.voxel_size_m"
    type: type
    default: Any
    doc: str
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[tuple] = None
    dynamic: bool = False  # may change while running

    def describe_range(self) -> str:
        if self.choices:
            return "one of: " + ", ".join(str(c) for c in self.choices)
        lo = "-inf" if self.min is None else _fmt(self.min)
        hi = "inf" if self.max is None else _fmt(self.max)
        if self.min is None and self.max is None:
            return ""
        return f"range [{lo}, {hi}]"


def param(default: Any, doc: str, *, min: Optional[float] = None, max: Optional[float] = None,
          choices: Optional[Sequence] = None, dynamic: bool = False) -> Any:
    """Declare a leaf parameter of a config dataclass."""
    meta = {_META: dict(doc=doc, min=min, max=max,
                        choices=tuple(choices) if choices is not None else None,
                        dynamic=dynamic)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(cls: type) -> Any:
    """Declare a nested group (a dataclass with its own defaults)."""
    return field(default_factory=cls)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _leaf_type(tp: Any) -> type:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _leaf_type(args[0])
    if origin in (list, tuple):
        return list
    if isinstance(tp, type):
        return tp
    return object


def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def iter_params(cfg_or_cls: Any, prefix: str = "") -> Iterator[ParamSpec]:
    """Yield every leaf parameter of a config dataclass (class or instance), depth first."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    hints = _hints(cls)
    for f in fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if is_dataclass(tp):
            sub = getattr(cfg_or_cls, f.name) if not isinstance(cfg_or_cls, type) else tp
            yield from iter_params(sub, prefix=name + ".")
            continue
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        if isinstance(cfg_or_cls, type):
            default = f.default if f.default is not MISSING else f.default_factory()
        else:
            default = getattr(cfg_or_cls, f.name)
        yield ParamSpec(name=name, type=_leaf_type(tp), default=default, **meta)


def spec_of(cls: type, name: str) -> ParamSpec:
    for spec in iter_params(cls):
        if spec.name == name:
            return spec
    raise UserInputError(f"unknown parameter '{name}'{_suggest(name, [s.name for s in iter_params(cls)])}")


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def coerce(spec: ParamSpec, value: Any) -> Any:
    """Convert ``value`` to the parameter's type and check its range; raise UserInputError."""
    tp = spec.type
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("true", "1", "yes", "on"):
                    value = True
                elif low in ("false", "0", "no", "off"):
                    value = False
                else:
                    raise ValueError(value)
            elif not isinstance(value, (bool, int)):
                raise ValueError(value)
            value = bool(value)
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            value = int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
        elif tp is str:
            value = "" if value is None else str(value)
        elif tp is list:
            if isinstance(value, str):
                value = [v for v in (s.strip() for s in value.split(",")) if v]
            value = list(value)
    except (TypeError, ValueError):
        raise UserInputError(
            f"parameter '{spec.name}': expected {tp.__name__}, got {value!r}") from None
    if spec.choices is not None and value not in spec.choices:
        raise UserInputError(
            f"parameter '{spec.name}': {value!r} is not {spec.describe_range()}")
    if tp in (int, float):
        if value != value:  # NaN
            raise UserInputError(f"parameter '{spec.name}': NaN is not allowed")
        if spec.min is not None and value < spec.min:
            raise UserInputError(f"parameter '{spec.name}': {value} is below {spec.describe_range()}")
        if spec.max is not None and value > spec.max:
            raise UserInputError(f"parameter '{spec.name}': {value} is above {spec.describe_range()}")
    return value


def to_dict(cfg: Any) -> dict:
    """Nested plain dict of a config instance."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: Optional[dict], base: Any = None) -> Any:
    """Build a validated config of type ``cls`` from a nested dict (missing keys keep defaults).

    Unknown keys are an error that names the key and the closest known one.
    """
    cfg = base if base is not None else cls()
    known = [s.name for s in iter_params(cls)]
    for name, value in _flatten(data or {}):
        if name not in known:
            raise UserInputError(f"unknown parameter '{name}'{_suggest(name, known)}")
        set_value(cfg, name, value)
    return cfg


def _flatten(data: dict, prefix: str = "") -> Iterator[tuple]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def set_value(cfg: Any, name: str, value: Any) -> Any:
    """Set the dotted parameter ``name`` on ``cfg`` after validation; return the stored value."""
    spec = spec_of(type(cfg), name)
    value = coerce(spec, value)
    *path, leaf = name.split(".")
    obj = cfg
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, leaf, value)
    return value


def get_value(cfg: Any, name: str) -> Any:
    obj = cfg
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def load_yaml(cls: type, path: str | Path) -> Any:
    """Load a YAML config, plain or in the ROS form ``/**: ros__parameters: ...``."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserInputError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"config file {path} must hold a mapping at the top level")
    data = unwrap_ros_yaml(data)
    return from_dict(cls, data)


def unwrap_ros_yaml(data: dict) -> dict:
    """Return the parameter mapping of a ROS parameter file, or ``data`` if it is plain."""
    if len(data) == 1:
        (node_key, inner), = data.items()
        if isinstance(inner, dict) and "ros__parameters" in inner:
            return inner["ros__parameters"] or {}
    return data


def dump_yaml(cfg_or_cls: Any, ros: bool = False, header: str = "") -> str:
    """The commented YAML of a config (its current values, or the defaults of a class)."""
    cfg = cfg_or_cls() if isinstance(cfg_or_cls, type) else cfg_or_cls
    lines = []
    if header:
        lines += [f"# {line}".rstrip() for line in header.splitlines()] + [""]
    indent = ""
    if ros:
        lines += ["/**:", "  ros__parameters:"]
        indent = "    "
    _dump_group(cfg, indent, lines)
    return "\n".join(lines) + "\n"


def _dump_group(obj: Any, indent: str, lines: list) -> None:
    hints = _hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(hints[f.name]):
            doc = (type(value).__doc__ or "").strip().splitlines()
            if doc:
                lines.append(f"{indent}# {doc[0]}")
            lines.append(f"{indent}{f.name}:")
            _dump_group(value, indent + "  ", lines)
            continue
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        spec = next(s for s in iter_params(type(obj)) if s.name == f.name)
        notes = [meta["doc"]]
        rng = spec.describe_range()
        if rng:
            notes.append(f"({rng})")
        if meta["dynamic"]:
            notes.append("[changeable at run time]")
        lines.append(f"{indent}# {' '.join(notes)}")
        lines.append(f"{indent}{f.name}: {_yaml_scalar(value)}")


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def add_cli_args(parser: argparse.ArgumentParser, cls: type, groups: Optional[Sequence[str]] = None) -> None:
    """Add a ``--group.name VALUE`` flag for every parameter (optionally of some groups only)."""
    title = parser.add_argument_group("configuration (any parameter of config/recon.yaml)")
    for spec in iter_params(cls):
        if groups is not None and spec.name.split(".")[0] not in groups:
            continue
        rng = spec.describe_range()
        help_text = f"{spec.doc} (default: {spec.default!r}{'; ' + rng if rng else ''})"
        title.add_argument(f"--{spec.name}", dest=f"cfg__{spec.name}", default=None,
                           metavar=spec.type.__name__.upper(), help=help_text.replace("%", "%%"))


def apply_cli_args(cfg: Any, args: argparse.Namespace) -> Any:
    """Apply the ``--group.name`` flags of ``cfg``'s schema that were given on the command
    line (flags of other schemas added to the same parser are left alone)."""
    known = {spec.name for spec in iter_params(type(cfg))}
    for key, value in vars(args).items():
        name = key[len("cfg__"):]
        if key.startswith("cfg__") and value is not None and name in known:
            set_value(cfg, name, value)
    return cfg
