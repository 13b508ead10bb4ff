"""Ads: a short text ad matching the categories on the page, chosen deterministically."""

from __future__ import annotations

import hashlib

from archipel import Service, rpc

from .types import Ad

ADS_BY_CATEGORY: dict[str, tuple[Ad, ...]] = {
    "kitchen": (
        Ad("/product/cutting-board", "Walnut boards, oiled by hand: 10% off this week"),
        Ad("/product/camp-mug", "Coffee tastes better from enamel. Try the camp mug"),
    ),
    "home": (Ad("/product/desk-lamp", "Warm light for long evenings: the brass desk lamp"),),
    "office": (Ad("/product/notebook", "Pocket-sized ideas: field notebooks, three for two"),),
    "stationery": (Ad("/product/notebook", "Dotted pages, kraft covers, back-pocket size"),),
    "garden": (
        Ad("/product/watering-can", "Your ferns deserve copper"),
        Ad("/product/planter", "Stoneware planters with matching saucers"),
    ),
    "clothing": (Ad("/product/beanie", "Merino that does not itch. Really"),),
    "accessories": (Ad("/product/tote-bag", "One tote, a week of groceries"),),
    "outdoor": (Ad("/product/sunglasses", "Polarised bamboo sunglasses. They float"),),
}
MAX_ADS = 2


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def choose_ads(context_keys: list[str], limit: int = MAX_ADS) -> list[Ad]:
    """Ads for the given categories (unknown ones ignored), or picks from all when none match."""
    matching = [ad for key in dict.fromkeys(context_keys) for ad in ADS_BY_CATEGORY.get(key, ())]
    pool = matching or [ad for ads in ADS_BY_CATEGORY.values() for ad in ads]
    unique = list(dict.fromkeys(pool))
    seed = ",".join(context_keys)
    return sorted(unique, key=lambda ad: _digest(f"{seed}\x00{ad.text}"))[:limit]


class Ads(Service):
    @rpc(idempotent=True, timeout=0.5)  # decoration on a page: not worth a long wait
    async def get_ads(self, context_keys: list[str]) -> list[Ad]:
        return choose_ads(context_keys)
