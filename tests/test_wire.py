"""The shared cattrs converter: wire names, strictness, error paths, None omission."""

from __future__ import annotations

from typing import Any, Literal

import attrs
import pytest

from trio_sfu.errors import InvalidMessageError
from trio_sfu.wire import converter, structure_untrusted, unstructure, wire_name


@attrs.frozen
class Leaf:
    clock_rate: int
    channels: int | None = None


@attrs.frozen
class Branch:
    codecs: list[Leaf]
    kind: Literal["audio", "video"] = "audio"
    max_bitrate: float | None = None
    params: dict[str, str | int] = attrs.field(factory=dict)
    odd: int = attrs.field(default=0, metadata={"wire": "OS"})
    flag: bool = False


def error_of(data: Any, cls: type[Any] = Branch) -> str:
    with pytest.raises(InvalidMessageError) as info:
        structure_untrusted(data, cls)
    assert info.value.code == "invalid_message"
    return info.value.message


def test_wire_name_is_camel_case_unless_overridden() -> None:
    fields = attrs.fields_dict(Branch)
    assert wire_name(fields["max_bitrate"]) == "maxBitrate"
    assert wire_name(fields["codecs"]) == "codecs"
    assert wire_name(fields["odd"]) == "OS"
    assert wire_name(attrs.fields_dict(Leaf)["clock_rate"]) == "clockRate"


def test_structure_renames_and_round_trips() -> None:
    data = {
        "codecs": [{"clockRate": 48000, "channels": 2}, {"clockRate": 90000}],
        "kind": "video",
        "maxBitrate": 1500000,
        "params": {"apt": 101, "profile-level-id": "42e01f"},
        "OS": 1024,
        "flag": True,
    }
    branch = structure_untrusted(data, Branch)
    assert branch == Branch(
        codecs=[Leaf(48000, 2), Leaf(90000)],
        kind="video",
        max_bitrate=1500000.0,
        params={"apt": 101, "profile-level-id": "42e01f"},
        odd=1024,
        flag=True,
    )
    # An int for a float field becomes a float (JSON has one number type).
    assert type(branch.max_bitrate) is float
    back = unstructure(branch)
    assert back["OS"] == 1024 and "odd" not in back
    assert back["codecs"][1] == {"clockRate": 90000}  # channels None is left out
    assert structure_untrusted(back, Branch) == branch


def test_unstructure_omits_none_optionals_only() -> None:
    data = unstructure(Branch(codecs=[Leaf(8000)]))
    assert data == {
        "codecs": [{"clockRate": 8000}],
        "kind": "audio",
        "params": {},
        "OS": 0,
        "flag": False,
    }
    # Falsy values that are not None stay.
    assert unstructure(Leaf(0, 0)) == {"clockRate": 0, "channels": 0}


def test_extra_keys_are_rejected_at_any_depth() -> None:
    assert "unknown field(s): bogus" in error_of({"codecs": [], "bogus": 1})
    message = error_of({"codecs": [{"clockRate": 1}, {"clockRate": 2, "sneaky": 3}]})
    assert message == "invalid field 'codecs[1]': unknown field(s): sneaky"
    # The Python name is not a wire name: the wire name is then missing.
    message = error_of({"codecs": [{"clock_rate": 1}]})
    assert message == "invalid field 'codecs[0].clockRate': required field missing"
    assert "unknown field(s): clock_rate" in error_of(
        {"codecs": [{"clockRate": 1, "clock_rate": 1}]}
    )


@pytest.mark.parametrize(
    ("data", "path", "text"),
    [
        ({"codecs": [{"clockRate": "48000"}]}, "codecs[0].clockRate", "expected an integer"),
        ({"codecs": [{"clockRate": 1.5}]}, "codecs[0].clockRate", "expected an integer"),
        ({"codecs": [{"clockRate": True}]}, "codecs[0].clockRate", "got a boolean"),
        ({"codecs": [{"clockRate": 1, "channels": "2"}]}, "codecs[0].channels", "integer"),
        ({"codecs": [{}]}, "codecs[0].clockRate", "required field missing"),
        ({"codecs": "abc"}, "codecs", "expected an array, got a string"),
        ({"codecs": {"clockRate": 1}}, "codecs", "expected an array, got an object"),
        ({"codecs": ["x"]}, "codecs[0]", "expected an object, got a string"),
        ({"codecs": [], "kind": "text"}, "kind", "must be one of 'audio', 'video'"),
        ({"codecs": [], "maxBitrate": "1"}, "maxBitrate", "expected a number"),
        ({"codecs": [], "flag": 1}, "flag", "expected a boolean, got an integer"),
        ({"codecs": [], "params": []}, "params", "expected an object, got an array"),
        ({"codecs": [], "OS": "1"}, "OS", "expected an integer"),
        ({}, "codecs", "required field missing"),
    ],
)
def test_wrong_types_name_the_wire_path(data: Any, path: str, text: str) -> None:
    message = error_of(data)
    assert message.startswith(f"invalid field {path!r}: "), message
    assert text in message


def test_codec_parameter_values_must_be_json_scalars() -> None:
    message = error_of({"codecs": [], "params": {"apt": [101]}})
    assert message.startswith("invalid field \"params['apt']\""), message


def test_non_object_top_level() -> None:
    assert error_of([1, 2]) == "invalid Branch: expected a JSON object"
    assert error_of(None) == "invalid Branch: expected a JSON object"


def test_structure_untrusted_of_a_list_type() -> None:
    assert structure_untrusted([{"clockRate": 1}], list[Leaf]) == [Leaf(1)]
    with pytest.raises(InvalidMessageError, match="expected an array"):
        structure_untrusted("x", list[Leaf])


def test_literal_does_not_confuse_true_and_one() -> None:
    @attrs.frozen
    class Numbered:
        n: Literal[1, 2]

    assert converter.structure({"n": 1}, Numbered) == Numbered(1)
    assert "must be one of 1, 2" in error_of({"n": True}, Numbered)
