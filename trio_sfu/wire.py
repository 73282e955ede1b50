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

from typing import Any, Literal, TypeVar, get_args, get_origin

import attrs
import cattrs
import cattrs.v
from cattrs.cols import list_structure_factory, mapping_structure_factory
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


class _JsonTypeError(TypeError):
    """A JSON value of the wrong type or out of a Literal; its text goes to the client."""


_JSON_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _structure_factory(cls: type[Any]) -> Any:
    overrides: dict[str, Any] = {a.name: override(rename=wire_name(a)) for a in attrs.fields(cls)}
    base = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **overrides)

    def structure_object(value: Any, tp: Any) -> Any:
        if not isinstance(value, dict):
            raise _JsonTypeError(f"expected an object, got {_json_name(value)}")
        return base(value, tp)

    return structure_object


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
            raise _JsonTypeError(f"expected {_JSON_NAMES[expected]}, got a boolean")
        if expected is float and type(value) is int:
            return float(value)
        if not isinstance(value, expected):
            raise _JsonTypeError(f"expected {_JSON_NAMES[expected]}, got {_json_name(value)}")
        return value

    return structure


for _scalar in (str, int, float, bool):
    converter.register_structure_hook(_scalar, _strict_scalar(_scalar))
# Unions of JSON scalars (codec parameters are ``dict[str, str | int]``) are checked by
# isinstance, not converted.
configure_union_passthrough(str | int | float | bool | None, converter)


def _is_list(tp: Any) -> bool:
    return get_origin(tp) is list


def _strict_list_factory(tp: Any, conv: cattrs.Converter) -> Any:
    # cattrs would accept any iterable: a string as a list of characters, an object as its keys.
    base = list_structure_factory(tp, conv)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, list):
            raise _JsonTypeError(f"expected an array, got {_json_name(value)}")
        return base(value, tp)

    return structure


def _is_dict(tp: Any) -> bool:
    return get_origin(tp) is dict


def _strict_dict_factory(tp: Any, conv: cattrs.Converter) -> Any:
    base = mapping_structure_factory(tp, conv)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise _JsonTypeError(f"expected an object, got {_json_name(value)}")
        return base(value, tp)

    return structure


def _is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal


def _literal_factory(tp: Any) -> Any:
    allowed = get_args(tp)

    def structure(value: Any, _: Any) -> Any:
        # ``True == 1``: compare types too, so that JSON true is not the literal 1.
        for option in allowed:
            if type(value) is type(option) and value == option:
                return value
        choices = ", ".join(repr(option) for option in allowed)
        raise _JsonTypeError(f"must be one of {choices}, got {value!r}"[:200])

    return structure


converter.register_structure_hook_factory(_is_list, _strict_list_factory)
converter.register_structure_hook_factory(_is_dict, _strict_dict_factory)
converter.register_structure_hook_factory(_is_literal, _literal_factory)


def _format_exception(exc: BaseException, tp: type[Any] | None) -> str:
    if isinstance(exc, _JsonTypeError):
        return str(exc)
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown field(s): {', '.join(sorted(exc.extra_fields))}"
    return cattrs.v.format_exception(exc, tp)


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
        if isinstance(exc, cattrs.BaseValidationError):
            messages = cattrs.transform_error(exc, format_exception=_format_exception)
        else:
            messages = [f"{_format_exception(exc, None)} @ $"]
        name = getattr(cls, "__name__", repr(cls))
        if not messages:
            raise InvalidMessageError(f"invalid {name}: {exc}") from None
        text, _, path = messages[0].rpartition(" @ ")
        where = _wire_path(cls, path) if path else ""
        raise InvalidMessageError(
            f"invalid field {where!r}: {text}" if where else f"invalid {name}: {text}"
        ) from None


def unstructure(obj: Any) -> Any:
    """The JSON-shaped form of an attrs object (or list/dict of them)."""
    return converter.unstructure(obj)
