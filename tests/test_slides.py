"""The presentation (docs/slides): the README's command renders both languages with Marp and the
machine's Chromium; each PDF has one page per slide; the French deck is the English one's
translation, slide for slide, with the same code."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from pypdf import PdfReader

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT / "docs" / "slides"
BUILD = SLIDES / "build"
ARTIFACTS = ROOT / "test-artifacts" / "slides"
LANGUAGES = ("en", "fr")
BUILD_TIMEOUT = 90  # both languages take about 15 s on the 2-core VM


def readme_build_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Presentation\n(.*?)^## ", readme, re.S | re.M)
    assert section is not None, "README.md has no '## Presentation' section"
    block = re.search(r"```bash\n(.*?)```", section[1], re.S)
    assert block is not None, "README.md's Presentation section shows no ```bash block"
    (line,) = block[1].strip().splitlines()
    return line.split("#")[0].strip()


def slides(markdown: str) -> list[str]:
    """The slides of a Marp deck: its body after the front matter, split on `---` lines outside
    code blocks (Marp's separator)."""
    front = re.match(r"---\n.*?\n---\n", markdown, re.S)
    assert front is not None, "the deck has no front matter"
    assert re.search(r"^marp: true$", front[0], re.M), "the front matter lacks `marp: true`"
    pages: list[list[str]] = [[]]
    in_code = False
    for line in markdown[front.end() :].splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if line == "---" and not in_code:
            pages.append([])
        else:
            pages[-1].append(line)
    assert not in_code, "a code block is never closed"
    return ["\n".join(page) for page in pages]


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```.*?^```$", markdown, re.S | re.M)


def deck(lang: str) -> str:
    return (SLIDES / f"archipel.{lang}.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def built() -> Path:
    """Runs the README's command once for the module; the title slides go to test-artifacts/."""
    missing = []
    if shutil.which("npm") is None or not (SLIDES / "node_modules" / ".bin" / "marp").exists():
        missing.append("the Marp CLI: run scripts/setup.sh (npm ci in docs/slides; needs nodejs and npm)")
    if not Path("/usr/bin/chromium").exists():
        missing.append("Chromium: apt-get install chromium (scripts/setup.sh does it)")
    if missing:
        pytest.fail("cannot render the slides without " + "; ".join(missing))
    command = readme_build_command()
    assert command == "bash docs/slides/build.sh"
    done = subprocess.run(
        shlex.split(command), cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for lang in LANGUAGES:
        title = BUILD / f"archipel.{lang}.001.png"
        assert title.exists(), f"{command} wrote no {title.name}"
        shutil.copy(title, ARTIFACTS / title.name)
    return BUILD


@pytest.mark.timeout(BUILD_TIMEOUT + 20)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_pdf_has_one_page_per_slide(built: Path, lang: str) -> None:
    count = len(slides(deck(lang)))
    assert 18 <= count <= 24, f"archipel.{lang}.md has {count} slides; the talk is about twenty"
    pages = len(PdfReader(built / f"archipel.{lang}.pdf").pages)
    assert pages == count, f"archipel.{lang}.pdf has {pages} pages for {count} slides"


@pytest.mark.timeout(BUILD_TIMEOUT + 20)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_html_and_the_title_slide_are_written_with_their_pictures(built: Path, lang: str) -> None:
    html = (built / f"archipel.{lang}.html").read_text(encoding="utf-8")
    pictures = re.findall(r'<img src="([^":]+)"', html)
    assert sorted(pictures) == ["img/dashboard.png", "img/shop-latency.svg"]
    for picture in pictures:
        assert (built / picture).is_file(), f"archipel.{lang}.html shows {picture}, which build/ lacks"
    title = (built / f"archipel.{lang}.001.png").read_bytes()
    assert title.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(title[16:20], "big"), int.from_bytes(title[20:24], "big")
    assert (width, height) == (1280, 720)  # 16:9, Marp's default size


def test_french_is_the_english_deck_slide_for_slide_with_the_same_code() -> None:
    english, french = deck("en"), deck("fr")
    en_slides, fr_slides = slides(english), slides(french)
    assert len(fr_slides) == len(en_slides)
    for number, (en, fr) in enumerate(zip(en_slides, fr_slides, strict=True), start=1):
        assert code_blocks(fr) == code_blocks(en), f"slide {number}: the code blocks differ"
        pictures = re.compile(r"!\[[^]]*\]\(([^)]+)\)")
        assert pictures.findall(fr) == pictures.findall(en), f"slide {number}: the pictures differ"
        if en.strip():
            assert fr != en, f"slide {number} is not translated"
    assert re.search(r"^lang: fr$", french, re.M) and re.search(r"^lang: en$", english, re.M)


def test_every_picture_a_slide_shows_exists() -> None:
    for lang in LANGUAGES:
        for picture in re.findall(r"!\[[^]]*\]\(([^)]+)\)", deck(lang)):
            assert (SLIDES / picture).is_file(), f"archipel.{lang}.md shows {picture}, which is missing"


def test_the_build_names_what_to_install_when_the_browser_is_missing() -> None:
    done = subprocess.run(
        ["bash", "docs/slides/build.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "CHROME_PATH": "/nonexistent/chromium"},
    )
    assert done.returncode != 0
    assert "no browser at /nonexistent/chromium: install chromium" in done.stderr
