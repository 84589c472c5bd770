"""What each config key is: its type, its valid range, and what a different value changes on resume.

Every field of the config dataclasses is declared with `setting(default, ...)`, which keeps these traits next
to the field they describe:

    lr: float = setting(2e-3, gt=0)                        # a number > 0
    beta2: float = setting(0.95, ge=0, lt=1)               # in [0, 1)
    max_loops: int = setting(4, ge=1, le=MAX_REPEATS, changes=MODEL)
    split: str = setting("969,30,1", changes=DATA)

`build_group(cls, "train", values)` turns a mapping into the dataclass and checks every value against its
declared type (a union such as `int | None` included) and bounds, naming the key at fault. The relations
between keys (top_k <= num_experts, divisibility by TP, ...) stay in each class's own `validate()`.

`changes` says what resuming a checkpoint with another value of the key changes: `MODEL`, the model's function
(shapes, routing, loop counts: refused unless `checkpoint.allow_model_change=true`); `DATA`, the stream of
training samples (allowed, with a warning). Keys with neither (learning rate, logging, parallel layout, ...) may
change freely between a run and its resume.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

from vffn_pretrain.config.errors import ConfigError

MODEL = "model"
DATA = "data"

# Upper bound of the repeat counts (loops of the shared FFN): each one is a full FFN pass per token.
MAX_REPEATS = 64
# numpy's RandomState (the data order) takes seeds below 2**32.
MAX_SEED = 2**32 - 1
# Any integer key: it must fit the int64 tensors and numpy indices it ends up in.
MAX_INT = 2**62


def setting(default: Any = None, *, ge=None, gt=None, le=None, lt=None, changes: str | None = None,
            default_factory=dataclasses.MISSING):
    """A dataclass field with its bounds (ge/gt/le/lt: >=, >, <=, < that number) and its resume trait."""
    metadata = {"bounds": (ge, gt, le, lt), "changes": changes}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bounds_of(f: dataclasses.Field) -> tuple | None:
    bounds = f.metadata.get("bounds")
    return bounds if bounds and any(b is not None for b in bounds) else None


def keys_that_change(cls, what: str) -> tuple[str, ...]:
    """The fields of config dataclass `cls` whose `changes` trait is `what` (MODEL or DATA)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("changes") == what)


def _allowed_types(hint) -> tuple[type, ...]:
    """The runtime types a field's annotation admits (`int | None` -> (int, NoneType)); floats take ints."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _allowed_types(arg))
    if origin is not None:  # list[str], dict[...]: the container type
        return (origin,)
    if hint is float:
        return (float, int)
    if hint is Any:
        return (object,)
    return (hint,)


def _type_name(types_: tuple[type, ...]) -> str:
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    parts = list(dict.fromkeys(names.get(t, t.__name__) for t in types_))
    if "an integer" in parts and "a number" in parts:
        parts.remove("an integer")
    return " or ".join(parts)


def check_type(key: str, value: Any, hint) -> None:
    allowed = _allowed_types(hint)
    if object in allowed:
        return
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if not ok:
        raise ConfigError(key, f"expected {_type_name(allowed)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")


def describe_bounds(bounds: tuple) -> str:
    """"in [0, 1)", ">= 0", "positive (> 0)", ..."""
    ge, gt, le, lt = bounds
    if bounds == (None, 0, None, None):
        return "positive (> 0)"
    if bounds == (1, None, None, None):
        return "a positive integer (>= 1)"
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f">= {ge}" if ge is not None else f"> {gt}"
    return f"<= {le}" if le is not None else f"< {lt}"


def check_bounds(key: str, value: Any, bounds: tuple) -> None:
    """ConfigError naming `key` unless `value` (a number; None is left to the caller) lies within `bounds`."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ge, gt, le, lt = bounds
    inside = ((ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
              and (lt is None or value < lt))
    if not inside:
        raise ConfigError(key, f"must be {describe_bounds(bounds)}, got {value!r}")


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def check_fields(obj, group: str) -> None:
    """Check every field of dataclass instance `obj` against its declared type and bounds."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{group}.{f.name}"
        if dataclasses.is_dataclass(value):
            check_fields(value, key)
            continue
        check_type(key, value, hints[f.name])
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ConfigError(key, f"{value} is out of range (at most {MAX_INT})")
        bounds = bounds_of(f)
        if bounds is not None:
            check_bounds(key, value, bounds)


def build_group(cls, group: str, values: Any, nested: dict[str, type] | None = None):
    """Dataclass `cls` from the mapping `values` (None: all defaults), refusing unknown keys and checking every
    value (`check_fields`). `nested` maps a field holding a sub-group to its dataclass."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(group, f"must be a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"{group}.{key}", f"unknown key (known: {', '.join(sorted(names))})")
    kwargs = dict(values)
    hints = _hints(cls)
    for name, value in kwargs.items():
        if name in (nested or {}):
            kwargs[name] = build_group(nested[name], f"{group}.{name}", value)
        else:  # before constructing: __post_init__ may compute with the value
            check_type(f"{group}.{name}", value, hints[name])
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(group, str(e)) from None
    check_fields(obj, group)
    return obj
