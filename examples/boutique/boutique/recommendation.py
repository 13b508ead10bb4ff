"""Recommendation: a few other products, the same ones for the same user and page."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from archipel import Service, rpc

from .catalog import Catalog

DEFAULT_LIMIT = 4


def recommend(
    candidates: Iterable[str], exclude: Iterable[str], seed: str, limit: int = DEFAULT_LIMIT
) -> list[str]:
    """Up to ``limit`` candidates not in ``exclude``, in a stable order shuffled by ``seed``."""
    excluded = set(exclude)
    kept = {c for c in candidates if c not in excluded}
    return sorted(kept, key=lambda c: hashlib.sha256(f"{seed}\x00{c}".encode()).digest())[: max(0, limit)]


class Recommendation(Service):
    catalog: Catalog

    @rpc(idempotent=True, timeout=0.5)  # a page without suggestions beats a slow page
    async def list_recommendations(
        self, user_id: str, product_ids: list[str], limit: int = DEFAULT_LIMIT
    ) -> list[str]:
        """Product ids to suggest to ``user_id`` next to ``product_ids`` (which are left out)."""
        products = await self.catalog.list_products()
        return recommend(
            (p.id for p in products), product_ids, f"{user_id}|{','.join(sorted(product_ids))}", limit
        )
