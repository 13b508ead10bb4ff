"""Catalog: the products for sale. A fixed list; prices in US dollars."""

from __future__ import annotations

from archipel import NotFound, Service, rpc

from .money import from_decimal
from .types import Product


def _product(pid: str, name: str, price: str, categories: list[str], description: str) -> Product:
    return Product(
        pid, name, description, f"/static/products/{pid}.svg", from_decimal("USD", price), categories
    )


PRODUCTS: tuple[Product, ...] = (
    _product(
        "camp-mug",
        "Enamel Camp Mug",
        "12.50",
        ["kitchen", "outdoor"],
        "A speckled enamel mug that shrugs off campfires and office desks alike. 350 ml.",
    ),
    _product(
        "tea-towel",
        "Linen Tea Towel",
        "9.90",
        ["kitchen", "home"],
        "Stonewashed linen, striped in the colours of an old harbour. Dries glasses without lint.",
    ),
    _product(
        "desk-lamp",
        "Brass Desk Lamp",
        "89.00",
        ["home", "office"],
        "A small articulated lamp in brushed brass with a warm 2700 K bulb.",
    ),
    _product(
        "cutting-board",
        "Walnut Cutting Board",
        "45.00",
        ["kitchen"],
        "End-grain walnut, oiled by hand. Kind to knife edges, heavy enough not to slide.",
    ),
    _product(
        "beanie",
        "Merino Beanie",
        "24.00",
        ["clothing", "outdoor"],
        "Ribbed merino wool that keeps warm without itching. One size, many colours of mood.",
    ),
    _product(
        "tote-bag",
        "Canvas Tote Bag",
        "18.00",
        ["accessories", "clothing"],
        "Heavy cotton canvas with an inside pocket for keys. Carries a week of groceries.",
    ),
    _product(
        "planter",
        "Ceramic Planter",
        "32.00",
        ["home", "garden"],
        "Glazed stoneware pot with a drainage hole and a matching saucer. 15 cm across.",
    ),
    _product(
        "sunglasses",
        "Bamboo Sunglasses",
        "59.00",
        ["accessories", "outdoor"],
        "Light bamboo frames with polarised lenses. Floats if it falls off the pier.",
    ),
    _product(
        "notebook",
        "Field Notebook",
        "7.25",
        ["office", "stationery"],
        "48 dotted pages in a kraft cover that fits a back pocket. Pencil not included.",
    ),
    _product(
        "watering-can",
        "Copper Watering Can",
        "64.00",
        ["garden", "home"],
        "A long-spouted copper can for indoor plants, 1.5 litres, patinas beautifully.",
    ),
)

_BY_ID: dict[str, Product] = {p.id: p for p in PRODUCTS}


def find_product(product_id: str) -> Product:
    try:
        return _BY_ID[product_id]
    except KeyError:
        raise NotFound(f"product {product_id!r} not found") from None


def search_products(query: str) -> list[Product]:
    """Products whose name, description or a category contains every word of the query."""
    words = query.lower().split()
    return [
        p
        for p in PRODUCTS
        if all(w in f"{p.name} {p.description} {' '.join(p.categories)}".lower() for w in words)
    ]


class Catalog(Service):
    @rpc(idempotent=True)
    async def list_products(self) -> list[Product]:
        return list(PRODUCTS)

    @rpc(idempotent=True)
    async def get_product(self, product_id: str) -> Product:
        return find_product(product_id)

    @rpc(idempotent=True)
    async def search(self, query: str) -> list[Product]:
        return search_products(query)
