"""The engine's verbs: requests that a worker serves, and how each crosses the worker channel.

A verb is a method of :class:`~trio_sfu.engine.api.EngineVerbs` marked with :func:`verb`,
which names the parameter whose id says which worker holds what the request is about.
:func:`verb_table` reads each verb off that class once, at import (its parameters in order
with their defaults, the types of those that need structuring, the result's type), and
everything on the way is derived from that one table (``api.VERBS``):

* the signaling process sends a request by :meth:`Verb.bind` and :meth:`Verb.encode_args`
  (:class:`~trio_sfu.engine.worker_handle.WorkerHandle`), after
  :class:`~trio_sfu.engine.pool.WorkerPool` picked the worker by :attr:`Verb.route`;
* the worker process structures it on receipt (:meth:`Verb.decode_args`), calls the
  :class:`~trio_sfu.engine.worker.Worker` method of the same name, and unstructures the
  result on send (:meth:`Verb.encode_result`);
* the signaling process structures the answer on receipt (:meth:`Verb.decode_result`).

So every parameter object is converted once at each crossing: unstructured by the sender,
structured by the receiver. Values that are already plain (ids, flags, numbers, ``Literal``
strings, ``dict[str, Any]``) cross as they are. One exception to "once": every
``rtc:consume`` carries its peer's RtpCapabilities, the same few over and over, and
structuring them costs more than the rest of the request's work in the worker; the
receiver keeps the last :data:`MEMO_SIZE` of them by their wire form (see :class:`_Memo`).

Sans-IO: no trio import.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, Union, final, get_args, get_origin, get_type_hints

import attrs
import msgpack

from trio_sfu.ortc.types import RtpCapabilities
from trio_sfu.wire import converter

F = TypeVar("F", bound=Callable[..., Any])

#: Where :func:`verb` leaves its mark on a method.
_MARK: Final = "_engine_verb"

#: A parameter without a default.
_REQUIRED: Final[Any] = inspect.Parameter.empty

#: How many structured RtpCapabilities a receiver keeps by their wire form.
MEMO_SIZE: Final = 256


@final
@attrs.frozen
class _Mark:
    route: str
    idempotent: bool


def verb(route: str, *, idempotent: bool = False) -> Callable[[F], F]:
    """Mark an :class:`~trio_sfu.engine.api.EngineVerbs` method as a verb. ``route``: the
    parameter holding the id that names the worker (``router_id``: a router the pool placed
    there; any other: the worker whose tag starts the id). ``idempotent``: a close, for
    which an unknown id (a worker that died, an entity that closed) is nothing to do."""

    def mark(method: F) -> F:
        setattr(method, _MARK, _Mark(route, idempotent))
        return method

    return mark


@final
@attrs.frozen
class Param:
    name: str
    #: ``_REQUIRED`` (``inspect.Parameter.empty``) when the caller must give it.
    default: Any
    keyword_only: bool
    #: The type it is structured to on receipt (and unstructured from on send), or None
    #: when its value crosses as it is. None values always cross as they are.
    structured: Any


@final
@attrs.frozen
class Verb:
    """One request: its name (the engine method's), parameters, result, and routing."""

    name: str
    params: tuple[Param, ...]
    #: The parameter whose id names the worker, and its index in :attr:`params`.
    route: str
    route_index: int
    idempotent: bool
    #: The result's type when it is structured on receipt, else None.
    result: Any
    #: How many parameters a caller may give by position.
    positional: int

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
        """The values of a call ``method(*args, **kwargs)`` in parameter order, defaults
        filled in. Raises TypeError where calling the engine method would."""
        if len(args) > self.positional:
            raise TypeError(f"{self.name}() takes {self.positional} positional arguments")
        values = list(args)
        used = 0
        for param in self.params[len(values) :]:
            if param.name in kwargs:
                values.append(kwargs[param.name])
                used += 1
            elif param.default is not _REQUIRED:
                values.append(param.default)
            else:
                raise TypeError(f"{self.name}() missing argument {param.name!r}")
        if used != len(kwargs):
            named = {p.name for p in self.params[len(args) :]}
            raise TypeError(f"{self.name}() got unexpected arguments {sorted(set(kwargs) - named)}")
        return values

    def encode_args(self, values: Sequence[Any]) -> list[Any]:
        """Bound values (:meth:`bind`) as they cross the channel."""
        return [
            value if param.structured is None or value is None else converter.unstructure(value)
            for param, value in zip(self.params, values, strict=True)
        ]

    def decode_args(self, wire: Sequence[Any]) -> dict[str, Any]:
        """The keyword arguments of the engine method from their wire form. Raises
        ValueError for a wrong count, cattrs' errors for values of the wrong shape."""
        if len(wire) != len(self.params):
            raise ValueError(f"{self.name} takes {len(self.params)} arguments, got {len(wire)}")
        return {
            param.name: value
            if param.structured is None or value is None
            else _structure(value, param.structured)
            for param, value in zip(self.params, wire, strict=True)
        }

    def encode_result(self, value: Any) -> Any:
        return value if self.result is None else converter.unstructure(value)

    def decode_result(self, wire: Any) -> Any:
        return wire if self.result is None else converter.structure(wire, self.result)


def forwarder(
    table: dict[str, Verb],
    owner: object,
    name: str,
    send: Callable[[Verb, list[Any]], Awaitable[Any]],
) -> Callable[..., Awaitable[Any]]:
    """What ``owner.<name>`` is for a class that forwards the verbs of ``table`` (from its
    ``__getattr__``): a coroutine function that binds its arguments (:meth:`Verb.bind`) and
    hands them to ``send``. AttributeError for any other name."""
    verb = table.get(name)
    if verb is None:
        raise AttributeError(f"{type(owner).__name__!r} object has no attribute {name!r}")

    async def forward(*args: Any, **kwargs: Any) -> Any:
        return await send(verb, verb.bind(args, kwargs))

    forward.__name__ = forward.__qualname__ = name
    return forward


def verb_table(cls: type[Any]) -> dict[str, Verb]:
    """Every method of ``cls`` marked by :func:`verb`, by name. Run once, at import."""
    table = {}
    for name, method in vars(cls).items():
        mark = getattr(method, _MARK, None)
        if not isinstance(mark, _Mark):
            continue
        hints = get_type_hints(method)
        signature = inspect.signature(method)
        params = tuple(
            Param(
                p.name,
                p.default,
                p.kind is inspect.Parameter.KEYWORD_ONLY,
                _structured(hints[p.name]),
            )
            for p in list(signature.parameters.values())[1:]  # not self
        )
        names = [p.name for p in params]
        table[name] = Verb(
            name=name,
            params=params,
            route=mark.route,
            route_index=names.index(mark.route),
            idempotent=mark.idempotent,
            result=_structured(hints["return"]),
            positional=sum(not p.keyword_only for p in params),
        )
    return table


def _structured(hint: Any) -> Any:
    """``hint`` without None, when a value of it needs structuring (it holds an attrs class
    or a tuple); None when values of it cross as they are."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        members = [m for m in get_args(hint) if m is not type(None)]
        if not any(_structured(m) is not None for m in members):
            return None
        return members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
    if attrs.has(hint) or origin is tuple:
        return hint
    if origin in (list, dict) and any(_structured(arg) is not None for arg in get_args(hint)):
        return hint
    return None


# ---- structuring on receipt ----------------------------------------------------------------


@final
class _Memo:
    """Structured values of one type by their wire form (MessagePack bytes: packing them
    costs a tenth of structuring them); the oldest is forgotten past :data:`MEMO_SIZE`."""

    def __init__(self, tp: type[Any]) -> None:
        self.tp = tp
        self._values: dict[bytes, Any] = {}

    def structure(self, wire: Any) -> Any:
        key = msgpack.packb(wire)
        value = self._values.get(key)
        if value is None:
            value = converter.structure(wire, self.tp)
            if len(self._values) >= MEMO_SIZE:
                del self._values[next(iter(self._values))]
            self._values[key] = value
        return value


_MEMOS: Final = {RtpCapabilities: _Memo(RtpCapabilities)}


def _structure(wire: Any, tp: Any) -> Any:
    memo = _MEMOS.get(tp)
    if memo is not None:
        return memo.structure(wire)
    return converter.structure(wire, tp)
