"""Cart: each user's basket. In the service's store by default; in Redis when
``BOUTIQUE_REDIS_URL`` is set.

The cart empties itself when an order is placed (``OrderPlaced``), once per order: an order
announced again must not wipe a basket the user has filled since.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Protocol

from archipel import Collection, Conflict, InvalidArgument, Service, collection, on, rpc

from .types import (
    MAX_ID,
    MAX_QUANTITY,
    CartContents,
    CartItem,
    OrderId,
    OrderItem,
    OrderPlaced,
    ProductId,
    RequestedQuantity,
    UserId,
    check_order_id,
)

MAX_USER_ID = MAX_ID
MAX_PRODUCT_ID = 64
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
    if "\0" in user_id:
        raise InvalidArgument("user_id must not contain NUL characters")
    return user_id


def check_product_id(product_id: str) -> str:
    if not product_id or len(product_id) > MAX_PRODUCT_ID or "\0" in product_id:
        raise InvalidArgument(f"product_id must be 1 to {MAX_PRODUCT_ID} characters, without NUL")
    return product_id


class CartLineFull(Conflict, InvalidArgument):
    """Adding would take a line of the cart over MAX_QUANTITY: the request is well-formed but the
    cart's content refuses it (409); still an invalid argument to callers that catch those."""


class CartStore(Protocol):
    async def add(self, user_id: str, product_id: str, quantity: int, limit: int) -> int:
        """Add ``quantity`` unless the line would then hold more than ``limit``; return the line's
        quantity with it added (above ``limit``: the cart is left as it was)."""

    async def set(self, user_id: str, product_id: str, quantity: int) -> None: ...
    async def items(self, user_id: str) -> list[CartItem]: ...
    async def clear(self, user_id: str) -> None: ...
    async def remove_ordered(self, user_id: str, order_id: str, ordered: Mapping[str, int]) -> bool:
        """Take the ordered quantities out of the cart the first time ``order_id`` is seen
        (remembering it), dropping lines that reach zero; False after."""

    async def close(self) -> None: ...


class CollectionStore:
    """Carts in the cart service's own store: one row per cart, one per order that emptied one.

    Inside an RPC or an event handling, the writes commit with it (a refused add writes nothing).
    """

    def __init__(self, carts: Collection[CartContents], emptied: Collection[str]) -> None:
        self._carts = carts
        self._emptied = emptied  # order id -> the user whose cart it emptied

    async def add(self, user_id: str, product_id: str, quantity: int, limit: int) -> int:
        lines = await self._lines(user_id)
        new_quantity = lines.get(product_id, 0) + quantity
        if new_quantity <= limit:  # never stored above it: a stored CartItem holds a Quantity
            lines[product_id] = new_quantity
            await self._save(user_id, lines)
        return new_quantity

    async def set(self, user_id: str, product_id: str, quantity: int) -> None:
        lines = await self._lines(user_id)
        lines[product_id] = quantity
        await self._save(user_id, lines)

    async def items(self, user_id: str) -> list[CartItem]:
        cart = await self._carts.get(user_id)
        return cart.items if cart is not None else []

    async def clear(self, user_id: str) -> None:
        await self._carts.delete(user_id)

    async def remove_ordered(self, user_id: str, order_id: str, ordered: Mapping[str, int]) -> bool:
        if await self._emptied.get(order_id) is not None:
            return False
        lines = await self._lines(user_id)
        for product_id, quantity in ordered.items():
            lines[product_id] = lines.get(product_id, 0) - quantity
        left = {product_id: quantity for product_id, quantity in lines.items() if quantity > 0}
        if left:
            await self._save(user_id, left)
        else:
            await self._carts.delete(user_id)
        await self._emptied.put(order_id, user_id)
        return True

    async def close(self) -> None:
        pass

    async def _lines(self, user_id: str) -> dict[str, int]:
        return {item.product_id: item.quantity for item in await self.items(user_id)}

    async def _save(self, user_id: str, lines: dict[str, int]) -> None:
        await self._carts.put(user_id, CartContents(user_id, [CartItem(p, q) for p, q in lines.items()]))


# Marks the order as handled and takes its lines out of the cart in one atomic step.
# ARGV: the mark's lifetime, then product id and ordered quantity pairs.
_REMOVE_ORDERED_ONCE = """
if not redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1]) then
  return 0
end
for i = 2, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], -tonumber(ARGV[i + 1])) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
"""


class RedisStore:
    """One hash per cart (``{prefix}cart:{user}``: product id -> quantity), expiring after a week."""

    def __init__(self, url: str, prefix: str = "boutique:") -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url)
        self._prefix = prefix

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}cart:{user_id}"

    async def add(self, user_id: str, product_id: str, quantity: int, limit: int) -> int:
        key = self._key(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, product_id, quantity)
            pipe.expire(key, CART_TTL_SECONDS)
            new_quantity, _ = await pipe.execute()
        if int(new_quantity) > limit:  # atomic increment, then undone: no lost update between two adds
            await self._redis.hincrby(key, product_id, -quantity)
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

    async def remove_ordered(self, user_id: str, order_id: str, ordered: Mapping[str, int]) -> bool:
        pairs = [str(value) for line in ordered.items() for value in line]
        done = await self._redis.eval(
            _REMOVE_ORDERED_ONCE,
            2,
            self._key(user_id),
            f"{self._prefix}order-emptied:{order_id}",
            ORDER_MEMORY_SECONDS,
            *pairs,
        )
        return bool(done)

    async def close(self) -> None:
        await self._redis.aclose()


class Cart(Service):
    carts = collection("carts", CartContents)  # key: user id
    emptied_for_order = collection("emptied_for_order", str)  # key: order id; value: user id
    store: CartStore

    def __init__(self, store: CartStore | None = None) -> None:
        self.store = store or CollectionStore(self.carts, self.emptied_for_order)

    async def start(self) -> None:
        url = os.environ.get("BOUTIQUE_REDIS_URL")
        if url:
            self.store = RedisStore(url, os.environ.get("BOUTIQUE_REDIS_PREFIX", "boutique:"))

    async def stop(self) -> None:
        await self.store.close()

    @rpc
    async def add_item(
        self, user_id: UserId, product_id: ProductId, quantity: RequestedQuantity
    ) -> CartContents:
        """Add to the cart; refused if the line would exceed MAX_QUANTITY. Returns the new cart."""
        check_user_id(user_id)
        check_quantity(quantity)
        check_product_id(product_id)
        new_quantity = await self.store.add(user_id, product_id, quantity, MAX_QUANTITY)
        if new_quantity > MAX_QUANTITY:
            raise CartLineFull(
                f"at most {MAX_QUANTITY} of one product per cart (you already have {new_quantity - quantity})"
            )
        return await self.get_cart(user_id)

    @rpc(idempotent=True)
    async def get_cart(self, user_id: UserId) -> CartContents:
        check_user_id(user_id)
        return CartContents(user_id, await self.store.items(user_id))

    @rpc(idempotent=True)
    async def empty_cart(self, user_id: UserId) -> None:
        check_user_id(user_id)
        await self.store.clear(user_id)

    @rpc(idempotent=True, timeout=1.0)  # the buyer's confirmation waits on it: not for long
    async def remove_ordered(self, user_id: UserId, order_id: OrderId, items: list[CartItem]) -> None:
        """Take what order ``order_id`` bought out of the cart, once per order. The storefront
        calls it as it confirms the order, so the buyer's next page (and next checkout) no longer
        holds it; the OrderPlaced handler does the same, and makes it certain."""
        check_user_id(user_id)
        check_order_id(order_id)
        for item in items:
            check_product_id(item.product_id)
        await self.store.remove_ordered(user_id, order_id, _quantities(items))

    @on(OrderPlaced)
    async def empty_after_order(self, event: OrderPlaced) -> None:
        # Only what the order bought leaves the cart: the event can land after the buyer has
        # added more (a busy or restarting consumer, a redelivery), and those lines must stay.
        # The inbox already skips a redelivery of this event (same event id). The per-order mark
        # is for the same order announced under another event id (one form submitted to two
        # checkout replicas at once: each emits one), or already taken out by remove_ordered.
        await self.store.remove_ordered(event.user_id, event.order_id, _quantities(event.items))


def _quantities(lines: list[CartItem] | list[OrderItem]) -> dict[str, int]:
    """Product id -> quantity, lines of one product added up."""
    ordered: dict[str, int] = {}
    for line in lines:
        ordered[line.product_id] = ordered.get(line.product_id, 0) + line.quantity
    return ordered
