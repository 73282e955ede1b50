"""The one cattrs converter between attrs classes and the JSON wire format.

* Python attributes are snake_case, wire keys camelCase: ``rtcp_feedback`` <->
  ``rtcpFeedback``. An attribute can name its own wire key with
  ``attrs.field(metadata={"wire": "OS"})`` where the rule does not fit.
* Structuring forbids unknown keys and type errors; :func:`structure_untrusted` turns every
  failure into one :class:`~trio_sfu.errors.InvalidMessageError` whose message names the
  offending field by its wire path (``rtpParameters.codecs[0].clockRate``).
* Unstructuring leaves out optional fields that are ``None`` (mediasoup omits them).

Sans-IO: no trio import.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_union_passthrough

from trio_sfu.errors import InvalidMessageError

T = TypeVar("T")

__all__ = ["converter", "structure_untrusted", "unstructure", "wire_name"]


def wire_name(attribute: attrs.Attribute[Any]) -> str:
    """The JSON key of an attrs attribute: its ``wire`` metadata, else camelCase."""
    explicit = attribute.metadata.get("wire")
    if explicit is not None:
        return str(explicit)
    head, *rest = attribute.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


converter = cattrs.Converter(forbid_extra_keys=True)


def _structure_factory(cls: type[Any]) -> Any:
    overrides: dict[str, Any] = {a.name: override(rename=wire_name(a)) for a in attrs.fields(cls)}
    return make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **overrides)


def _unstructure_factory(cls: type[Any]) -> Any:
    fields = attrs.fields(cls)
    overrides: dict[str, Any] = {a.name: override(rename=wire_name(a)) for a in fields}
    base = make_dict_unstructure_fn(cls, converter, **overrides)
    optional = {wire_name(a) for a in fields if a.default is None}

    def unstructure_omitting_none(obj: Any) -> dict[str, Any]:
        data: dict[str, Any] = base(obj)
        for key in optional:
            if data.get(key, 0) is None:
                del data[key]
        return data

    return unstructure_omitting_none


converter.register_structure_hook_factory(attrs.has, _structure_factory)
converter.register_unstructure_hook_factory(attrs.has, _unstructure_factory)


def _strict_scalar(expected: type[Any]) -> Any:
    # cattrs would turn "5" into 5 and 1 into "1"; JSON input must have the right type.
    def structure(value: Any, _: Any) -> Any:
        if type(value) is bool and expected is not bool:
            raise TypeError(f"expected {expected.__name__}, got bool")
        if expected is float and type(value) is int:
            return float(value)
        if not isinstance(value, expected):
            raise TypeError(f"expected {expected.__name__}, got {type(value).__name__}")
        return value

    return structure


for _scalar in (str, int, float, bool):
    converter.register_structure_hook(_scalar, _strict_scalar(_scalar))
# Unions of JSON scalars (codec parameters are ``dict[str, str | int]``) are checked by
# isinstance, not converted.
configure_union_passthrough(str | int | float | bool | None, converter)


def _wire_path(cls: type[Any], path: str) -> str:
    """Rewrite cattrs' ``$.rtp_parameters.codecs[0]`` path into wire names."""
    out: list[str] = []
    current: Any = cls
    for part in path.removeprefix("$").split("."):
        if not part:
            continue
        name, bracket, rest = part.partition("[")
        if current is not None and attrs.has(current) and name:
            field = next((a for a in attrs.fields(current) if a.name == name), None)
            if field is not None:
                out.append(wire_name(field) + (bracket + rest if bracket else ""))
                current = _inner_attrs_class(field.type)
                continue
        out.append(part)
        current = None
    return ".".join(out)


def _inner_attrs_class(tp: Any) -> Any:
    if isinstance(tp, type) and attrs.has(tp):
        return tp
    for arg in getattr(tp, "__args__", ()) or ():
        found = _inner_attrs_class(arg)
        if found is not None:
            return found
    return None


def structure_untrusted(data: Any, cls: type[T]) -> T:
    """Structure JSON-shaped ``data`` into ``cls``.

    Raises :class:`InvalidMessageError` (and nothing else) naming the first bad field.
    """
    if attrs.has(cls) and not isinstance(data, dict):
        raise InvalidMessageError(f"invalid {cls.__name__}: expected a JSON object")
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # cattrs raises ExceptionGroups of many kinds
        messages = (
            cattrs.transform_error(exc) if isinstance(exc, cattrs.BaseValidationError) else []
        )
        if not messages:
            raise InvalidMessageError(f"invalid {cls.__name__}: {exc}") from None
        first = messages[0]
        text, _, path = first.rpartition(" @ ")
        where = _wire_path(cls, path) if path else ""
        raise InvalidMessageError(
            f"invalid field {where!r}: {text}" if where else f"invalid {cls.__name__}: {first}"
        ) from None


def unstructure(obj: Any) -> Any:
    """The JSON-shaped form of an attrs object (or list/dict of them)."""
    return converter.unstructure(obj)
