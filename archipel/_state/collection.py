"""The typed state API services use: ``carts = collection("carts", CartContents)``.

Values are stored as msgspec JSON and decoded to the declared type. Inside a unit of work on the
collection's store, writes are buffered and reads see them first; elsewhere (a service's
``start``, a background task, a monolith call into another service) each write commits at once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, Self, TypeVar, overload

import msgspec

from .records import InvalidValue
from .store import Store
from .work import UnitOfWork, current_work, unit_of_work

T = TypeVar("T")
StoreGetter = Callable[[], Store]


class Collection(Generic[T]):
    """Keys (strings) to values of type ``T`` in the store ``store()`` returns when used."""

    def __init__(self, store: StoreGetter, name: str, type: type[T]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a collection name must be a non-empty string, got {name!r}")
        self.name = name
        self.type = type
        self._store = store
        self._decoder = msgspec.json.Decoder(type)
        self._type_name = getattr(type, "__name__", repr(type))

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, {self._type_name})"

    async def get(self, key: str) -> T | None:
        store = self._store()
        self._check_key(key)
        work = current_work(store)
        if work is not None and (self.name, key) in work.writes:
            raw = work.writes[(self.name, key)]
        else:
            raw = await store.get(self.name, key)
        return None if raw is None else self._decode(key, raw)

    async def put(self, key: str, value: T) -> None:
        self._check_key(key)
        await self._write(key, self._encode(key, value))

    async def delete(self, key: str) -> None:
        self._check_key(key)
        await self._write(key, None)

    async def items(self, prefix: str = "", limit: int = 100, reverse: bool = False) -> list[tuple[str, T]]:
        """Up to ``limit`` (key, value) pairs whose key starts with ``prefix``, ordered by key."""
        store = self._store()
        pending = self._pending(store, prefix)
        # Each buffered delete may hide one stored row: read that many more so ``limit`` still fill.
        deleted = sum(raw is None for raw in pending.values())
        merged: dict[str, bytes | None] = dict(await store.scan(self.name, prefix, limit + deleted, reverse))
        merged.update(pending)
        keys = sorted((k for k, raw in merged.items() if raw is not None), reverse=reverse)[:limit]
        return [(k, self._decode(k, merged[k] or b"")) for k in keys]

    async def count(self) -> int:
        store = self._store()
        total = await store.count(self.name)
        for key, raw in self._pending(store, "").items():
            stored = await store.get(self.name, key) is not None
            total += (raw is not None) - stored
        return total

    def _pending(self, store: Store, prefix: str) -> dict[str, bytes | None]:
        work = current_work(store)
        if work is None:
            return {}
        return {k: raw for (c, k), raw in work.writes.items() if c == self.name and k.startswith(prefix)}

    async def _write(self, key: str, raw: bytes | None) -> None:
        store = self._store()
        work = current_work(store)
        if work is not None:
            work.writes[(self.name, key)] = raw
        else:
            await store.commit(UnitOfWork(store, writes={(self.name, key): raw}))

    def _encode(self, key: str, value: T) -> bytes:
        try:
            raw = msgspec.json.encode(value)
            # Decoding back now turns a value that could never be read again (a NaN in a float
            # field, a wrong type) into an error at the write, not at some later read.
            self._decoder.decode(raw)
        except (TypeError, msgspec.EncodeError, msgspec.DecodeError) as exc:
            raise InvalidValue(
                f"collection {self.name!r}, key {key!r}: cannot store {_short(value)} "
                f"as {self._type_name}: {exc}"
            ) from exc
        return raw

    def _decode(self, key: str, raw: bytes) -> T:
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise InvalidValue(
                f"collection {self.name!r}, key {key!r}: the stored value is not a valid {self._type_name} "
                f"({exc}); it was written by an incompatible version of the service or by hand"
            ) from exc

    def _check_key(self, key: str) -> None:
        # NUL and lone surrogates cannot be stored as text by every backend: refuse them everywhere.
        if isinstance(key, str) and "\0" not in key and _encodable(key):
            return
        raise InvalidValue(f"collection {self.name!r}: invalid key {key!r} (a string without NUL characters)")


def _encodable(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class CollectionField(Generic[T]):
    """Declared on a Service class; on an instance, the Collection bound to that service's store."""

    def __init__(self, name: str, type: type[T]) -> None:
        self.name = name
        self.type = type
        self._attr = name
        self._where = name

    def __set_name__(self, owner: type, attr: str) -> None:
        self._attr = attr
        self._where = f"{owner.__name__}.{attr}"

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> Collection[T]: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> Self | Collection[T]:
        if instance is None:
            return self
        where = self._where

        def store() -> Store:
            # Set by the runtime before the service's start().
            found: Store | None = getattr(instance, "_archipel_store", None)
            if found is None:
                raise RuntimeError(
                    f"{where}: the service has no state store; it is not running in an app "
                    "(collections work once the app has started it)"
                )
            return found

        bound = Collection(store, self.name, self.type)
        # Cached on the instance: later reads find it there without calling the descriptor.
        vars(instance)[self._attr] = bound
        return bound


def collection(name: str, type: type[T]) -> CollectionField[T]:
    """Declare a collection of a service's state: ``carts = collection("carts", CartContents)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a collection name must be a non-empty string, got {name!r}")
    return CollectionField(name, type)


class State:
    """A service's state as one object: collections made at run time, explicit atomic blocks."""

    def __init__(self, store: StoreGetter) -> None:
        self._store = store

    def collection(self, name: str, type: type[T]) -> Collection[T]:
        return Collection(self._store, name, type)

    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """``async with state.transaction():`` groups writes and emitted events into one commit
        (for code outside an RPC or a handler, which the runtime already wraps)."""
        return unit_of_work(self._store())
