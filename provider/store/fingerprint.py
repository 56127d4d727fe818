"""Fingerprints of values by content: equal in every process, whatever its hash seed.

A pickle is not such a fingerprint: a set's (and a frozenset constant's) order follows the
interpreter's string hashing, which ``PYTHONHASHSEED`` changes per process. Identities that
another process or worker must recognise (a ``.foreach`` plan) are made from these instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
from collections.abc import Callable
from types import CodeType, FunctionType
from typing import Any

from provider.store.reference import ITEM_KEY, Reference, is_reference


def fingerprint(value: Any) -> str:
    """The SHA-256 (hex) of ``value``'s canonical encoding.

    Plain data (None, bools, numbers, text, bytes, lists, tuples, dicts, sets, NamedTuples,
    dataclasses) is encoded canonically: sets and dict items in the order of their own
    fingerprints. A stored reference counts as its content's SHA-256 (and the item it selects).
    A function counts by its qualified name, bytecode, constants (nested code too), names and
    defaults, not by its globals' values. Anything else counts by its pickle.
    """
    digest = hashlib.sha256()
    _feed(digest.update, value, set())
    return digest.hexdigest()


def _tagged(update: Callable[[bytes], Any], tag: bytes, body: bytes) -> None:
    update(tag + struct.pack(">Q", len(body)) + body)


def _feed(update: Callable[[bytes], Any], value: Any, seen: set[int]) -> None:
    kind = type(value)
    if value is None or kind is bool:
        _tagged(update, b"c", repr(value).encode())
    elif kind is int or kind is float or kind is complex:
        _tagged(update, kind.__name__[:1].encode(), repr(value).encode())
    elif kind is str:
        _tagged(update, b"s", value.encode("utf-8", "surrogatepass"))
    elif kind is bytes or kind is bytearray:
        _tagged(update, b"b", bytes(value))
    elif is_reference(value):
        ref = Reference.from_json(value)
        item = value.get(ITEM_KEY) if isinstance(value, dict) else None
        _tagged(update, b"r", f"{ref.sha256}:{item}".encode())
    elif id(value) in seen:  # a container that holds itself
        _tagged(update, b"@", b"")
    elif isinstance(value, (list, tuple)):
        seen.add(id(value))
        _tagged(update, b"l", _name(kind).encode())
        update(struct.pack(">Q", len(value)))
        for item in value:
            _feed(update, item, seen)
        seen.discard(id(value))
    elif isinstance(value, dict):
        seen.add(id(value))
        _unordered(update, b"d", kind, [(k, v) for k, v in value.items()], seen)
        seen.discard(id(value))
    elif isinstance(value, (set, frozenset)):
        _unordered(update, b"e", kind, list(value), seen)
    elif isinstance(value, FunctionType):
        _tagged(update, b"f", f"{_module(value.__module__)}.{value.__qualname__}".encode())
        _feed(update, value.__code__, seen)
        _feed(update, value.__defaults__, seen)
        _feed(update, value.__kwdefaults__, seen)
    elif isinstance(value, CodeType):
        _tagged(update, b"k", value.co_code)
        _feed(update, value.co_consts, seen)
        _feed(update, (value.co_names, value.co_varnames, value.co_freevars), seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _tagged(update, b"o", _name(kind).encode())
        fields = dataclasses.fields(value)
        _feed(update, tuple((f.name, getattr(value, f.name)) for f in fields), seen)
    else:
        import cloudpickle

        _tagged(update, b"p", cloudpickle.dumps(value, protocol=5))


def _unordered(
    update: Callable[[bytes], Any], tag: bytes, kind: type, members: list[Any], seen: set[int]
) -> None:
    """A set's members (or a dict's items) in the order of their own fingerprints."""
    parts = []
    for member in members:
        digest = hashlib.sha256()
        _feed(digest.update, member, seen)
        parts.append(digest.digest())
    _tagged(update, tag, _name(kind).encode())
    update(struct.pack(">Q", len(parts)))
    for part in sorted(parts):
        update(part)


def _name(kind: type) -> str:
    return f"{_module(kind.__module__)}.{kind.__qualname__}"


# Airflow imports a DAG file as ``unusual_prefix_<sha1 of its path>_<name>``: the same file on
# two workers at two paths is the same module.
_DAG_FILE_MODULE = re.compile(r"^unusual_prefix_[0-9a-f]+_")


def _module(name: str | None) -> str:
    return _DAG_FILE_MODULE.sub("", name or "", count=1)
