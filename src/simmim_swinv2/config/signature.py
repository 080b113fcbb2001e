"""Structured-config dataclasses made from a callable's signature, so that the schema of a
`_target_` node is the callable it builds: one definition of its arguments, their types and defaults
(the callable's own).

`schema_of(Trainer, target="lightning.pytorch.Trainer", exclude=("callbacks", "logger", "plugins"))`
is a dataclass with a `_target_` field and one field per parameter. Types are mapped to what
OmegaConf 2.3 can check: `int`, `float`, `str`, `bool`, Enums, `Optional` of these and lists of
them; `Path` counts as `str`; a union of several types (`int | float`: a count or a fraction for
`limit_train_batches`), callables and objects become `Any`. A parameter without default is required
(`???`). What OmegaConf cannot check is kept in the class's `__unions__` (field -> the parameter's
annotation), which `matches` checks (`config.checks.check_values`, first thing in every command).

Why not hydra-zen's `builds(populate_full_signature=True)`, which derives the same fields: it widens
what OmegaConf cannot check to `Any` and checks it nowhere, where a bad `limit_train_batches=abc`
must fail at composition.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import field, fields, is_dataclass, make_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import MISSING

PRIMITIVES = (int, float, str, bool)


def omegaconf_type(annotation) -> Any:
    """The closest annotation OmegaConf 2.3 validates for a Python annotation (see the module
    docstring)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return Any
    if annotation in PRIMITIVES or (isinstance(annotation, type) and issubclass(annotation, Enum)):
        return annotation
    if annotation is Path:
        return str
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        optional = type(None) in args
        kinds = {omegaconf_type(a) for a in args if a is not type(None)}
        if len(kinds) == 1 and (kind := kinds.pop()) is not Any:
            return kind | None if optional else kind
        return Any
    if origin is Literal:
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 and kinds <= set(PRIMITIVES) else Any
    if origin in (list, tuple, Sequence, typing.Sequence):
        items = {omegaconf_type(a) for a in args if a is not Ellipsis}
        if len(items) == 1 and (item := items.pop()) in PRIMITIVES:
            return list[item]
    return Any


def _optional(kind) -> Any:
    return kind if kind is Any or type(None) in typing.get_args(kind) else kind | None


def _hints(fn: Callable) -> dict[str, Any]:
    """Evaluated annotations of `fn` (of `__init__` for a class); one that cannot be evaluated (a
    forward reference to an optional dependency) is `Any`."""
    fn = fn.__init__ if isinstance(fn, type) else fn
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - fall back parameter by parameter
        hints = {}
        for name, annotation in getattr(fn, "__annotations__", {}).items():
            try:
                hints[name] = (
                    eval(annotation, fn.__globals__) if isinstance(annotation, str) else annotation
                )  # noqa: S307
            except Exception:  # noqa: BLE001
                hints[name] = Any
        return hints


def _field(name: str, annotation, default, where: str) -> tuple:
    kind = omegaconf_type(annotation)
    if default is inspect.Parameter.empty or default is NO_DEFAULT:
        return name, kind, field(default=MISSING)
    if default is None:
        return name, _optional(kind), field(default=None)
    if isinstance(default, (tuple, list)) and all(isinstance(v, PRIMITIVES) for v in default):
        return name, kind, field(default_factory=lambda v=list(default): list(v))
    # a str may be an interpolation or "???" (required)
    if isinstance(default, (*PRIMITIVES, Enum)):
        return name, kind, field(default=default)
    raise TypeError(
        f"{where}: the default of {name!r} ({default!r}) cannot be a config value; exclude the "
        "parameter or give it a config default"
    )


def parameters(fn: Callable, exclude: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """`(name, annotation, default)` of each named parameter of `fn` (the fields of a dataclass
    `fn`), in order."""
    if is_dataclass(fn):
        hints = typing.get_type_hints(fn)
        return [
            (
                f.name,
                hints.get(f.name, Any),
                f.default if f.default_factory is NO_DEFAULT else f.default_factory(),
            )
            for f in fields(fn)
            if f.name not in exclude
        ]
    hints, out = _hints(fn), []
    for name, p in inspect.signature(fn).parameters.items():
        if name in ("self", *exclude) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append((name, hints.get(name, Any), p.default))
    return out


def schema_of(
    fn: Callable,
    *,
    target: str | None = None,
    exclude: Sequence[str] = (),
    follow: Callable | None = None,
    follow_exclude: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
    name: str | None = None,
    extra: Sequence[tuple[str, Any, Any]] = (),
) -> type:
    """A dataclass of `fn`'s parameters (less `exclude`), with `_target_: str = target` first when
    `target` is given.

    `follow`: where `fn` passes its `**kwargs` (`build_webdataset` -> `ShardDataset`), whose
    parameters (less `follow_exclude` and those `fn` names itself) are added. `defaults` replaces
    defaults (a subclass's own, such as `WallClockCheckpoint`'s `save_top_k=0`, or an
    interpolation); `extra`: `(name, annotation, default)` added last.
    """
    where = target or getattr(fn, "__qualname__", str(fn))
    params = parameters(fn, exclude)
    if follow is not None:
        own = {p[0] for p in params}
        params += [p for p in parameters(follow, (*exclude, *follow_exclude)) if p[0] not in own]
    params += list(extra)
    defaults = defaults or {}
    unknown = set(defaults) - {p[0] for p in params}
    if unknown:
        raise TypeError(f"{where}: defaults for parameters it does not have: {sorted(unknown)}")
    specs = [_field(n, a, defaults.get(n, d), where) for n, a, d in params]
    if target is not None:
        specs.insert(0, ("_target_", str, field(default=target)))
    cls_name = (
        name or "".join(part[:1].upper() + part[1:] for part in fn.__name__.split("_")) + "Config"
    )
    cls = make_dataclass(cls_name, specs)
    cls.__doc__ = (
        f"The arguments of {where} (generated from its signature: simmim_swinv2.config.signature)."
    )
    cls.__module__ = __name__
    cls.__unions__ = {
        n: a
        for n, a, _ in params
        if omegaconf_type(a) is Any and a not in (Any, inspect.Parameter.empty)
    }
    return cls


def hints_of(cls: type, name: str) -> type:
    """`cls`'s fields, all optional and unset (`???`) by default: suggestions a config may give for
    some of them (read with `oc.select`, which falls back to its default for an unset one)."""
    hints = typing.get_type_hints(cls)
    specs = [
        (f.name, _optional(hints[f.name]), field(default=MISSING))
        for f in fields(cls)
        if f.name != "_target_"
    ]
    out = make_dataclass(name, specs)
    out.__doc__ = f"Suggestions for some fields of {cls.__name__} (unset: `???`)."
    out.__module__ = __name__
    return out


def matches(value, annotation) -> bool:
    """Whether a plain composed value (resolved, containers as lists and dicts) fits a Python
    annotation: what OmegaConf leaves unchecked (`int | tuple[int, ...]`,
    `Literal["16-mixed", ...]`). A dict fits any class (it is a `_target_` node Hydra builds);
    callables and other objects are not checked."""
    if annotation in (Any, inspect.Parameter.empty):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):
        return isinstance(value, (int, float) if annotation is float else int) and not isinstance(
            value, bool
        )
    if annotation in (str, Path):
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type) and annotation not in PRIMITIVES:
        return isinstance(value, (dict, annotation))
    return True


def describe(annotation) -> str:
    """`int | tuple[int, ...]`, `'16-mixed' | 'bf16-mixed' | null`: an annotation as a config
    value's type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(describe(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if annotation is type(None):
        return "null"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else describe(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))
