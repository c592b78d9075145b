"""Command lines generated from config dataclasses (``dataclasses.fields`` + argparse), and option checks.

One ``--<field>`` per field (plus ``--<field-with-dashes>`` when asked), typed from the annotation:
``int``, ``float``, ``str``, ``bool`` (``true``/``false``), ``X | None`` (also ``none``), ``tuple[int, ...]``
(``[1,5,10]`` as the reference writes it, or ``1,5,10``). Per-field ``metadata``: ``help``, ``choices``, ``flag``
(another spelling), ``parse`` (a custom ``str -> value``), ``store_true``. A field that sets none of these gets a
help line naming its default. The config's own ``__post_init__`` checks values; a ``ValueError`` it raises is
reported by argparse against the CLI, and its message names the flag.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import types
import typing
from pathlib import Path


def _tuple_of(kind: type):
    def parse(s: str) -> tuple:
        s = s.strip()
        try:
            v = ast.literal_eval(s) if s[:1] in "[(" else [x for x in s.split(",") if x.strip()]
        except (ValueError, SyntaxError):
            raise argparse.ArgumentTypeError(f"expected a list like [1,5,10], got {s!r}") from None
        if not isinstance(v, (list, tuple)):
            v = [v]
        try:
            return tuple(kind(x) for x in v)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a list of {kind.__name__}, got {s!r}") from None
    return parse


def _bool(s: str) -> bool:
    if s.strip().lower() in ("1", "true", "yes"):
        return True
    if s.strip().lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _optional(parse):
    def p(s: str):
        return None if s.strip().lower() == "none" else parse(s)
    p.__name__ = getattr(parse, "__name__", "value")
    return p


def _parser_for(tp) -> tuple[typing.Callable, bool]:
    """(str -> value, optional?) for an annotation."""
    optional = False
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        return _tuple_of(args[0]), optional
    if tp is bool:
        return _bool, optional
    if tp in (int, float, str):
        return tp, optional
    raise TypeError(f"cliconf: unsupported field type {tp!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, dashes: bool = False,
                            skip: typing.Iterable[str] = ()) -> None:
    """Add one option per field of dataclass ``cls`` (``dest`` = field name); nested dataclass fields are
    skipped (pass them separately)."""
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if dashes and "_" in f.name else [])
        if "flag" in f.metadata:
            names.append(f.metadata["flag"])
        helptext = f.metadata.get("help", "")
        shown = list(default) if isinstance(default, tuple) else default
        helptext = f"{helptext} (default: {shown})" if helptext else f"default: {shown}"
        if f.metadata.get("store_true"):
            parser.add_argument(*names, dest=f.name, action="store_true", help=helptext)
            continue
        parse, optional = _parser_for(hints[f.name])
        parse = f.metadata.get("parse", parse)
        parser.add_argument(*names, dest=f.name, type=_optional(parse) if optional else parse, default=default,
                            choices=f.metadata.get("choices"), help=helptext)


def from_namespace(cls, ns: argparse.Namespace, **override):
    """``cls(**{field: ns.field})`` for the fields present in ``ns`` (others keep their default)."""
    kw = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    kw.update(override)
    return cls(**kw)


def build(parser: argparse.ArgumentParser, make: typing.Callable[[], object]):
    """``make()``; a ValueError raised by a config's checks becomes an argparse error (usage + message, exit 2)."""
    try:
        return make()
    except ValueError as e:
        parser.error(str(e))


def check_writable(path: str | Path | None, flag: str, *, directory: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written (names ``flag``). Creates nothing."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and (p.is_dir() != directory):
        raise ValueError(f"{flag} {path}: expected a {'folder' if directory else 'file'} path, found a "
                         f"{'folder' if p.is_dir() else 'file'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {path}: not writable")
    parent = p if directory and p.exists() else p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create it ({parent} is not a writable folder)")


def require(ok: bool, flag: str, expected: str, got) -> None:
    """``ValueError("<flag>: expected <expected>, got <got>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{flag}: expected {expected}, got {got!r}")
