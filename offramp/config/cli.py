"""Command-line flags generated from a config class: one flag per field, its help from the
field's docstring, so a new field is on the command line the moment it is declared.

    parser = argparse.ArgumentParser()
    add_config_flags(parser, TagConfig, FLAG_ALIASES)
    cfg = config_from_args(TagConfig, parser.parse_args(argv))

A top-level field `max_length` becomes `--max-length`; a field of a nested section keeps its
path, `--exit.token.mode` (dest "exit.token.mode"). Booleans get `--x/--no-x`. A tuple of
scalars takes a comma list. A tuple of sections (TagConfig.stages) has no flag: YAML or --set.
Flags override the YAML of --config, and `--set KEY=VALUE` overrides both.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from offramp.config.base import ConfigError, coerce, field_docs, load_config, sections, strip_optional

CONFIG_KEYS = "_config_keys"
"""Attribute of the parsed namespace listing the dests that are config keys."""


def add_config_flags(parser: argparse.ArgumentParser, cls, aliases: dict[str, Any] | None = None) -> None:
    """Add --config, --set and one flag per field of dataclass `cls` (sections recursed into).

    `aliases` maps a dotted key to one more flag name for it (kept for compatibility, e.g.
    "exit.policy": "--policy"), or to a (flag, value) pair: a flag that sets a fixed value
    (e.g. "exit.disabled": ("--no-exits", True))."""
    parser.add_argument("--config", metavar="YAML", help="YAML file of config keys (see conf/); flags override it")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, dotted inside a section (e.g. ray.num_cpus=4); repeatable, overrides flags and YAML",
    )
    aliases = dict(aliases or {})
    keys: list[str] = []
    unflagged: list[str] = []
    _add_fields(parser, parser, cls, "", aliases, keys, unflagged)
    unknown = sorted(set(aliases) - set(keys))
    if unknown:
        raise ValueError(f"flag aliases for keys {unknown} that {cls.__name__} has no flag for")
    parser.set_defaults(**{CONFIG_KEYS: tuple(keys)})
    if unflagged:
        note = f"Set in --config or with --set (no flag): {', '.join(unflagged)}."
        parser.epilog = f"{parser.epilog}\n\n{note}" if parser.epilog else note


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """{dotted key: value} of the config flags actually given on the command line."""
    return {k: getattr(args, k) for k in getattr(args, CONFIG_KEYS, ()) if getattr(args, k) is not None}


def config_from_args(cls, args: argparse.Namespace):
    """The config `cls` from --config's YAML, the flags given and --set, in that order of precedence."""
    return load_config(cls, args.config, overrides_from_args(args), args.set)


def _add_fields(parser, group, cls, prefix: str, aliases: dict, keys: list, unflagged: list) -> None:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    nested = sections(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name in nested:
            continue
        tp, _ = strip_optional(hints[f.name])
        if typing.get_origin(tp) is tuple and any(dataclasses.is_dataclass(a) for a in typing.get_args(tp)):
            unflagged.append(key)
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tuple_ = typing.get_origin(tp) is tuple
        help = f"{docs[f.name]} ({'comma-separated; ' if tuple_ else ''}default: {_show(default)})".replace("%", "%%")
        alias = aliases.get(key)
        names = [flag, alias] if isinstance(alias, str) else [flag]
        if tp is bool:
            group.add_argument(*names, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            parse = _value_parser(hints[f.name], flag)
            group.add_argument(*names, dest=key, type=parse, default=None, metavar=f.name.upper(), help=help)
        if isinstance(alias, tuple):
            extra, value = alias
            same = (flag if value else "--no-" + flag[2:]) if tp is bool else f"{flag} {value}"
            group.add_argument(extra, dest=key, action="store_const", const=value, default=None, help=f"same as {same}")
        keys.append(key)
    for name, section in nested.items():
        sub = parser.add_argument_group(prefix + name, (section.__doc__ or "").strip().splitlines()[0])
        _add_fields(parser, sub, section, f"{prefix}{name}.", aliases, keys, unflagged)


def _value_parser(tp, flag: str):
    """str -> a value of type `tp`; argparse reports a bad one with the flag (exit status 2)."""

    def parse(text: str):
        try:
            return coerce(text, tp, flag)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _show(default) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or "none"
    return str(default)
