"""Turning YAML and flags into frozen config objects: the loader every config class shares.

YAML is read once at the command line (pipelines/cli.py), turned into dataclasses by
`from_dict`, and each module receives only the sub-config it needs. Unknown keys and invalid
values raise `ConfigError` with a message that names the fix. Every field of a config class
carries a default and a one-line docstring (the string right after it), which `field_docs`
reads for the generated `--help`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DTYPES = ("float32", "float16", "bfloat16")


class ConfigError(ValueError):
    """A configuration problem found at start, before any work is done."""


@dataclass(frozen=True)
class MlflowConfig:
    """Where and under which names a run is logged to MLflow."""

    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    experiment: str | None = None
    """Experiment name; None = offramp-tag for tagging runs, offramp-train for training runs."""
    run_name: str | None = None
    """Run name; None lets MLflow pick one."""
    enabled: bool = True
    """Log to MLflow at all."""
    model_cache: str | None = None
    """Where a models:/NAME/VERSION or models:/NAME@ALIAS model is downloaded (one directory per
    name and version, reused); None = $OFFRAMP_MODEL_CACHE, else ~/.cache/offramp/models. On a
    cluster of several nodes, a path every node mounts at the same path."""


def check_dtype(value: str, name: str = "dtype") -> None:
    """Fail at start when the dtype setting `name` is not one offramp computes or carries in."""
    if value not in DTYPES:
        raise ConfigError(f"{name} {value!r} is not one of {list(DTYPES)}")


def require(obj, *names: str) -> None:
    """Fail with the flag to set when a required field of config `obj` is missing."""
    for name in names:
        if getattr(obj, name) in (None, ""):
            raise ConfigError(f"{name} is not set; pass --{name.replace('_', '-')} or set `{name}:` in --config")


# ---------------------------------------------------------------- field docs


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """{field: one-line description} of dataclass `cls`: the string literal right after each
    annotated field (base classes first). A nested section without one gets the first line of
    its class docstring."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # made at run time (dataclasses.make_dataclass): no source
            continue
        body = ast.parse(source).body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    for name, section in sections(cls).items():
        if name not in docs and section.__doc__:
            docs[name] = section.__doc__.strip().splitlines()[0]
    return {f.name: docs[f.name] for f in dataclasses.fields(cls) if f.name in docs}


# ---------------------------------------------------------------- types


def strip_optional(tp):
    """(T, True) for `T | None`, else (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp, True
    return tp, False


def sections(cls) -> dict[str, type]:
    """{field: dataclass} of the nested sections of `cls` (e.g. TagConfig.exit -> ExitConfig)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp, _ = strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out[f.name] = tp
    return out


def _section_paths(cls, prefix: str = "") -> list[str]:
    """Dotted paths of every field inside the nested sections of `cls` (not its own fields)."""
    out = []
    for name, section in sections(cls).items():
        for f in dataclasses.fields(section):
            out.append(f"{prefix}{name}.{f.name}")
        out += _section_paths(section, f"{prefix}{name}.")
    return out


def _suggest(cls, key: str, where: str) -> str:
    """'; did you mean ...?' for an unknown `key` of `cls`: a close field name, or a field of
    the same name in one of its sections (a key that moved into a section)."""
    here = f"{where}." if where else ""
    moved = [p for p in _section_paths(cls) if key in (p.rpartition(".")[2], p.replace(".", "_"))]
    if moved:
        return f"; did you mean {' or '.join(repr(here + p) for p in moved)}?"
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    leaves = {p.rpartition(".")[2]: p for p in _section_paths(cls)}
    close = difflib.get_close_matches(key, list(leaves), n=1)
    return f"; did you mean {here + leaves[close[0]]!r}?" if close else ""


# ---------------------------------------------------------------- dict -> dataclass


def coerce(value: Any, tp, where: str):
    """`value` (from YAML or a flag) as type `tp`; ConfigError naming `where` if it is not one."""
    tp, optional = strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} may not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {[f.name for f in dataclasses.fields(tp)]}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
        args = typing.get_args(tp)
        item = args[0]
        if len(args) == 2 and args[1] is not Ellipsis:
            if len(value) != 2:
                raise ConfigError(f"{where} must be a list of 2 values, got {value!r}")
            return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}={value!r} is not a valid {tp.__name__}") from None
    return value


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a (YAML) mapping; unknown keys raise with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in (data or {}).items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{_suggest(cls, key, where)} valid keys here: {names}")
        kwargs[key] = coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where + ': ' if where else ''}{e}") from None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(cls, path: str | None, overrides: dict[str, Any] | None = None, sets: list[str] = ()):
    """Read YAML (optional), apply CLI overrides (dotted keys) and `--set k=v` strings."""
    tree: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} not found; pass an existing file to --config (see conf/)")
        tree = yaml.safe_load(p.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must hold a YAML mapping at top level")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, key, value)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write it as key.path=value")
        key, _, raw = item.partition("=")
        _set_path(tree, key.strip(), yaml.safe_load(raw))
    return from_dict(cls, tree)
