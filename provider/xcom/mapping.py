"""Airflow's mapping machinery over stored values: the same items a plain ``@task`` gets.

A flow task's mapped arguments stay references until its runtime loads them. Airflow's own
machinery (``.expand``, ``.expand_kwargs``, ``XComArg.map / zip / concat``) works on values: it
takes ``len()``, indexes, iterates a dict's pairs and calls ``.map`` functions. So before it
sees an upstream's XCom, each pulled value becomes a *view* with the value's own shape:

- a reference to a whole stored list or tuple (a plain ``@task``'s result kept by ``FlowXCom``)
  is a sequence of its length whose items are *item references* (the list's reference plus the
  item's index), loaded where the task runs;
- where Airflow needs the items themselves (``.map`` functions, ``.expand_kwargs`` dicts),
  they are loaded on the worker, one item at a time, as ``@task`` would see them;
- any other stored value (a dict, a scalar) is loaded: Airflow maps over it as over the value.

Lists of references (a flow task's per-item results, a mapped upstream's results) keep their
items as references, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from provider.compat.airflow_sdk import (
    ConcatXComArg,
    DictOfListsExpandInput,
    ListOfDictsExpandInput,
    MapXComArg,
    PlainXComArg,
    XComArg,
    ZipXComArg,
)
from provider.store import is_reference, item_reference
from provider.xcom.references import references_kept

SEQUENCE_TYPES = ("builtins.list", "builtins.tuple")


def _store() -> Any:
    from provider import config

    return config.open_artifact_store()


def _load(value: Any) -> Any:
    """A value as ``@task`` would receive it: references (also nested) loaded."""
    from provider.runtime.run import resolve_references

    return resolve_references(value, _store())


class StoredSequence(Sequence[Any]):
    """A stored list or tuple, by reference: its length without loading it; its items as item
    references (``keep``) or as values, the whole list loaded once (``load``)."""

    def __init__(self, reference: Mapping[str, Any], *, load: bool) -> None:
        self.reference = reference
        self._length = int(reference["length"])
        self._load = load
        self._values: Any = None

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        if not self._load:
            return item_reference(self.reference, index)
        if self._values is None:
            self._values = _store().get(self.reference)
        return self._values[index]


class LoadedItems(Sequence[Any]):
    """A sequence whose items are loaded one at a time as they are indexed (a list of
    references, a mapped upstream's lazy results)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [_load(item) for item in self._items[index]]
        return _load(self._items[index])


def view(value: Any, *, load: bool) -> Any:
    """What Airflow's mapping sees for a pulled XCom value (see the module's docstring)."""
    if is_reference(value):
        if value.get("type") in SEQUENCE_TYPES and isinstance(value.get("length"), int):
            return StoredSequence(value, load=load)
        return _load(value)
    if isinstance(value, Mapping):
        has_refs = any(is_reference(item) for item in value.values())
        return _load(value) if load and has_refs else value
    if load and isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return LoadedItems(value)
    return value


@attrs.define
class _ViewedXComArg(PlainXComArg):
    """An upstream's XCom as :func:`view` presents it; map lengths count as for its own."""

    load: bool = False

    def resolve(self, context: Mapping[str, Any]) -> Any:
        with references_kept():
            return view(super().resolve(context), load=self.load)


def viewed(arg: Any, *, load: bool) -> Any:
    """``arg`` with each upstream XCom it pulls seen through :func:`view`; ``.map`` functions
    always see loaded items. Anything that is not an XComArg stays as it is."""
    if isinstance(arg, _ViewedXComArg):
        return arg
    if isinstance(arg, PlainXComArg):
        return _ViewedXComArg(operator=arg.operator, key=arg.key, load=load)
    if isinstance(arg, MapXComArg):
        return MapXComArg(viewed(arg.arg, load=True), arg.callables)
    if isinstance(arg, ZipXComArg):
        return ZipXComArg([viewed(a, load=load) for a in arg.args], fillvalue=arg.fillvalue)
    if isinstance(arg, ConcatXComArg):
        return ConcatXComArg([viewed(a, load=load) for a in arg.args])
    if isinstance(arg, XComArg):
        raise TypeError(f"flow tasks cannot map over a {type(arg).__name__} yet")
    return arg


def viewed_expand_input(expand_input: Any) -> Any:
    """A flow task's expand input whose upstream values are seen through :func:`view`.

    ``.expand`` keeps item references; ``.expand_kwargs`` loads each item (Airflow reads the
    keyword names from it).
    """
    if isinstance(expand_input, DictOfListsExpandInput):
        return DictOfListsExpandInput(
            {key: viewed(value, load=False) for key, value in expand_input.value.items()}
        )
    if isinstance(expand_input, ListOfDictsExpandInput):
        value = expand_input.value
        if isinstance(value, XComArg):
            return ListOfDictsExpandInput(viewed(value, load=True))
        return ListOfDictsExpandInput([viewed(item, load=True) for item in value])
    return expand_input


def foreach_items(items: Any, context: Mapping[str, Any]) -> Any:
    """A ``.foreach``'s items at run time: an upstream's result stays a reference (the items
    load where the chunks run); ``.map`` / ``.zip`` / ``.concat`` give their items as
    ``.expand`` would."""
    if isinstance(items, PlainXComArg):
        with references_kept():
            return items.resolve(context)
    if isinstance(items, XComArg):
        with references_kept():
            return viewed(items, load=False).resolve(context)
    return items
