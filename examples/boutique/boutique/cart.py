"""Cart: each user's basket. In memory by default; in Redis when ``BOUTIQUE_REDIS_URL`` is set.

The cart empties itself when an order is placed (``OrderPlaced``), once per order even if the
event arrives twice: a redelivered event must not wipe a basket the user has filled since.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any, Protocol

from archipel import InvalidArgument, Service, on, rpc

from .types import CartContents, CartItem, OrderPlaced

MAX_QUANTITY = 100
MAX_USER_ID = 128
CART_TTL_SECONDS = 7 * 24 * 3600
ORDER_MEMORY_SECONDS = 24 * 3600
_WHOLE_NUMBER = re.compile(r"^\s*[+-]?[0-9]{1,18}\s*$")


def check_quantity(quantity: int) -> int:
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidArgument(f"quantity must be between 1 and {MAX_QUANTITY}")
    return quantity


def parse_quantity(text: str) -> int:
    """Read a quantity typed in a form: a whole number between 1 and MAX_QUANTITY."""
    if not _WHOLE_NUMBER.match(text):
        raise InvalidArgument(f"quantity must be a whole number between 1 and {MAX_QUANTITY}")
    return check_quantity(int(text))


def check_user_id(user_id: str) -> str:
    if not user_id or len(user_id) > MAX_USER_ID:
        raise InvalidArgument(f"user_id must be 1 to {MAX_USER_ID} characters")
    return user_id


class CartStore(Protocol):
    async def add(self, user_id: str, product_id: str, quantity: int) -> int:
        """Add ``quantity`` and return the new quantity of that product in the cart."""

    async def set(self, user_id: str, product_id: str, quantity: int) -> None: ...
    async def items(self, user_id: str) -> list[CartItem]: ...
    async def clear(self, user_id: str) -> None: ...
    async def clear_for_order(self, user_id: str, order_id: str) -> bool:
        """Clear the cart the first time ``order_id`` is seen (remembering it); False after."""

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self, remembered_orders: int = 10_000) -> None:
        self._carts: dict[str, dict[str, int]] = {}
        self._orders: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered_orders

    async def add(self, user_id: str, product_id: str, quantity: int) -> int:
        lines = self._carts.setdefault(user_id, {})
        lines[product_id] = lines.get(product_id, 0) + quantity
        return lines[product_id]

    async def set(self, user_id: str, product_id: str, quantity: int) -> None:
        self._carts.setdefault(user_id, {})[product_id] = quantity

    async def items(self, user_id: str) -> list[CartItem]:
        return [CartItem(pid, qty) for pid, qty in self._carts.get(user_id, {}).items()]

    async def clear(self, user_id: str) -> None:
        self._carts.pop(user_id, None)

    async def clear_for_order(self, user_id: str, order_id: str) -> bool:
        if order_id in self._orders:
            return False
        self._carts.pop(user_id, None)
        self._orders[order_id] = None
        while len(self._orders) > self._remembered:
            self._orders.popitem(last=False)
        return True

    async def close(self) -> None:
        pass


# Marks the order as handled and deletes the cart in one atomic step.
_CLEAR_ONCE = """
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class RedisStore:
    """One hash per cart (``{prefix}cart:{user}``: product id -> quantity), expiring after a week."""

    def __init__(self, url: str, prefix: str = "boutique:") -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url)
        self._prefix = prefix

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}cart:{user_id}"

    async def add(self, user_id: str, product_id: str, quantity: int) -> int:
        key = self._key(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, product_id, quantity)
            pipe.expire(key, CART_TTL_SECONDS)
            new_quantity, _ = await pipe.execute()
        return int(new_quantity)

    async def set(self, user_id: str, product_id: str, quantity: int) -> None:
        await self._redis.hset(self._key(user_id), product_id, quantity)

    async def items(self, user_id: str) -> list[CartItem]:
        lines: dict[bytes, bytes] = await self._redis.hgetall(self._key(user_id))
        return sorted(
            (CartItem(pid.decode(), int(qty)) for pid, qty in lines.items()), key=lambda i: i.product_id
        )

    async def clear(self, user_id: str) -> None:
        await self._redis.delete(self._key(user_id))

    async def clear_for_order(self, user_id: str, order_id: str) -> bool:
        done = await self._redis.eval(
            _CLEAR_ONCE,
            2,
            self._key(user_id),
            f"{self._prefix}order-emptied:{order_id}",
            ORDER_MEMORY_SECONDS,
        )
        return bool(done)

    async def close(self) -> None:
        await self._redis.aclose()


class Cart(Service):
    store: CartStore

    def __init__(self, store: CartStore | None = None) -> None:
        self.store = store or MemoryStore()

    async def start(self) -> None:
        url = os.environ.get("BOUTIQUE_REDIS_URL")
        if url:
            self.store = RedisStore(url, os.environ.get("BOUTIQUE_REDIS_PREFIX", "boutique:"))

    async def stop(self) -> None:
        await self.store.close()

    @rpc
    async def add_item(self, user_id: str, product_id: str, quantity: int) -> CartContents:
        """Add to the cart; refused if the line would exceed MAX_QUANTITY. Returns the new cart."""
        check_user_id(user_id)
        check_quantity(quantity)
        if not product_id:
            raise InvalidArgument("product_id must not be empty")
        new_quantity = await self.store.add(user_id, product_id, quantity)
        if new_quantity > MAX_QUANTITY:
            await self.store.add(user_id, product_id, -quantity)
            raise InvalidArgument(
                f"at most {MAX_QUANTITY} of one product per cart (you already have {new_quantity - quantity})"
            )
        return await self.get_cart(user_id)

    @rpc(idempotent=True)
    async def get_cart(self, user_id: str) -> CartContents:
        check_user_id(user_id)
        return CartContents(user_id, await self.store.items(user_id))

    @rpc(idempotent=True)
    async def empty_cart(self, user_id: str) -> None:
        check_user_id(user_id)
        await self.store.clear(user_id)

    @on(OrderPlaced)
    async def empty_after_order(self, event: OrderPlaced) -> None:
        await self.store.clear_for_order(event.user_id, event.order_id)
