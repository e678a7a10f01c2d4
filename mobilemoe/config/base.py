"""Strict loading of typed config sections from plain dicts.

Every section of ``params.yaml`` is a dataclass. ``build(cls, data, key)`` turns a
mapping into an instance, checking unknown keys, missing keys and types against the
annotations, and reports problems as one :class:`ConfigError` naming the dotted key.
Sections may define ``validate(self, key)`` for cross-field rules (called after
building); it raises ``ConfigError`` through :func:`fail`.

Every numeric field states its range where it is defined, in its annotation:
``top_k: PositiveInt = 2`` or ``beta2: Annotated[float, Range(ge=0, lt=1)] = 0.95``.
``build`` checks it at load time (``top_k: must be > 0, got 0``) and
:func:`describe_keys` lists every key with its type and range (``mobilemoe config
--keys``). A test fails if a numeric field has no range.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Any, Iterator, Literal, Optional, Union, get_args, get_origin

from ..errors import UserError


class ConfigError(UserError, ValueError):
    """A problem in the configuration; the message names the file/key and the fix."""


def fail(key: str, problem: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {problem}")


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric config value (``None`` = unbounded on that side)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def describe(self) -> str:
        lo = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else ""
        hi = f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}" if self.lt is not None else ""
        return " and ".join(part for part in (lo, hi) if part) or "any value"

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


# The ranges most keys share.
PositiveInt = Annotated[int, Range(gt=0)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]


def _ranges(tp: Any) -> tuple[Any, list[Range]]:
    """(the annotated type, its ranges) for ``Annotated[T, Range(...)]``, else (tp, [])."""
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        return base, [m for m in meta if isinstance(m, Range)]
    return tp, []


def _type_name(tp: Any) -> str:
    tp, ranges = _ranges(tp)
    if ranges:
        return f"{_type_name(tp)} {' and '.join(r.describe() for r in ranges)}"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is list:
        (inner,) = get_args(tp)
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return f"a mapping of {_type_name(get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, complete: bool = False) -> Any:
    base, ranges = _ranges(tp)
    if ranges:
        out = _convert(base, value, key, complete)
        for r in ranges:
            if not r.holds(out):
                fail(key, f"must be {r.describe()}, got {out!r}")
        return out
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail(key, f"must be {_type_name(tp)}, got null")
        options = [a for a in args if a is not type(None)]
        # A mapping can only be meant for the dataclass option: report its inner error.
        if isinstance(value, dict):
            for arg in options:
                if dataclasses.is_dataclass(arg) or get_origin(arg) is dict:
                    return _convert(arg, value, key, complete)
        if len(options) == 1:
            return _convert(options[0], value, key, complete)
        for arg in options:
            try:
                return _convert(arg, value, key, complete)
            except ConfigError:
                pass
        fail(key, f"must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        fail(key, f"must be one of {', '.join(repr(a) for a in get_args(tp))}, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(key, f"must be a mapping, got {type(value).__name__} {value!r}")
        return build(tp, value, key, complete)
    if origin is list:
        (inner,) = get_args(tp)
        if not isinstance(value, list):
            fail(key, f"must be a list, got {type(value).__name__} {value!r}")
        return [_convert(inner, v, f"{key}[{i}]", complete) for i, v in enumerate(value)]
    if origin is dict:
        _, inner = get_args(tp)
        if not isinstance(value, dict):
            fail(key, f"must be a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _convert(inner, v, f"{key}.{k}", complete) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail(key, f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        fail(key, f"must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            fail(key, f"must be a number, got {value!r}")
        if not math.isfinite(number):  # .nan/.inf would only fail later, deep in torch
            fail(key, f"must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        fail(key, f"must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def build(cls: type, data: dict, key: str = "", complete: bool = False) -> Any:
    """Build dataclass ``cls`` from ``data`` strictly; ``key`` is the dotted prefix.

    ``complete``: every field must be given (a params file states every value in effect,
    so DVC, the flow and lineage see the same numbers); otherwise defaults fill gaps
    (e.g. configs stored in older checkpoints).
    """
    if not isinstance(data, dict):
        fail(key or "<root>", f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        fail(
            prefix + unknown[0],
            f"unknown key (known keys under {key or 'the top level'}: {', '.join(sorted(fields))})",
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], prefix + name, complete)
        elif complete or (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        ):
            fail(prefix + name, f"missing (expected {_type_name(hints[name])})")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key)
    return obj


def describe_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, its type and range) for every key of config class ``cls``; a section
    that is a mapping of sections (``name -> section``) is listed as ``key.<name>.field``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = prefix + f.name, hints[f.name]
        sections = [a for a in (tp, *get_args(tp)) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        if get_origin(tp) is dict and sections:
            yield from describe_keys(sections[0], f"{key}.<name>.")
        elif sections:
            if get_origin(tp) in (Union, types.UnionType):
                yield key, _type_name(tp)  # e.g. "a mapping | null"
            yield from describe_keys(sections[0], f"{key}.")
        else:
            yield key, _type_name(tp)


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config object (what YAML and MLflow params see)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not data and prefix:
            out[prefix[:-1]] = {}
        return out
    out[prefix[:-1]] = data
    return out


def require(cond: bool, key: str, problem: str) -> None:
    if not cond:
        fail(key, problem)


def positive(obj: Any, key: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            fail(f"{key}.{name}" if key else name, f"must be > 0, got {value}")
