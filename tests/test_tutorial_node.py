"""docs/tutorial-node.md, executed: the shop with its Node.js shipping, as a reader runs the page
from a copy of ``examples/boutique``; and its French translation, whose code blocks must be the
English ones byte for byte (so running the English page runs them).

The page follows docs/tutorial.md's conventions (see tests/test_tutorial.py), plus one: a block
titled with a file of the Node.js service (```` ```js title="shipping-node/src/tokens.js" ````) is an
excerpt of it, and must appear in that file word for word, so the page cannot drift from the code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_tutorial import Reader, blocks, headings

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "tutorial-node.md"
FRENCH = ROOT / "docs" / "tutorial-node.fr.md"
SHOP = ROOT / "examples" / "boutique"
EXCERPT_PREFIX = "shipping-node/src/"

pytestmark = pytest.mark.timeout(600)


def shop_copy(folder: Path) -> Path:
    """``examples/boutique`` as a reader has it, its Node.js dependencies included (linked: they
    are only read)."""
    shop = folder / "boutique"
    shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns("node_modules", ".archipel", "__pycache__"))
    modules = SHOP / "shipping-node" / "node_modules"
    assert modules.is_dir(), "run scripts/setup.sh: it runs npm ci in examples/boutique/shipping-node"
    (shop / "shipping-node" / "node_modules").symlink_to(modules)
    return shop


def test_every_excerpt_is_in_its_file_word_for_word() -> None:
    excerpts = [b for b in blocks(PAGE.read_text()) if (b.title or "").startswith(EXCERPT_PREFIX)]
    assert excerpts, "the page shows none of the service's code"
    for block in excerpts:
        assert block.body in (SHOP / str(block.title)).read_text(), f"not in {block.title}:\n{block.body}"


def test_the_french_page_has_the_same_blocks_and_headings() -> None:
    english, french = PAGE.read_text(), FRENCH.read_text()
    assert [(b.language, b.title, b.body) for b in blocks(french)] == [
        (b.language, b.title, b.body) for b in blocks(english)
    ]
    assert headings(french) == headings(english)


def test_every_command_of_the_page_runs_in_order(tmp_path: Path) -> None:
    shop = shop_copy(tmp_path)
    reader = Reader(shop)
    try:
        for block in blocks(PAGE.read_text()):
            if "Ctrl-C" in block.prose:
                reader.stop()
            if (block.title or "").startswith(EXCERPT_PREFIX):
                continue  # an excerpt: checked above
            if block.title is not None:
                (shop / block.title).write_text(block.body)
            else:
                assert block.language == "bash", f"neither written nor run:\n{block.body}"
                for line in block.body.splitlines():
                    if line.strip():
                        reader.run(line)
    finally:
        reader.stop()
