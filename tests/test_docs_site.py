"""The documentation site (mkdocs.yml): it builds strict with no warning, its translated pages exist
in both languages with the same commands, its internal links resolve, and the commands that the
README and the Concepts page show are real ones."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import typer.main

from archipel.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
TRANSLATED = ["concepts", "tutorial", "tutorial-node"]  # pages that must exist in English and in French
LANGUAGES = ["", "fr/"]  # each language's folder in the built site
# Material's notice that it is nearing its end of life is advice, not a problem of this site.
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
FENCE = re.compile(r"^(\s*)(```+)[^\n]*\n(.*?)^\1\2\s*$", re.MULTILINE | re.DOTALL)


def readme_site_commands() -> list[str]:
    """The commands of the README's "Documentation site" section, one a line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Documentation site", 1)[1].split("\n## ", 1)[0]
    blocks = [body for _, _, body in FENCE.findall(section)]
    return [line.split("#", 1)[0].strip() for body in blocks for line in body.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built by the README's build command into a temporary folder."""
    build = next(c for c in readme_site_commands() if c.startswith("mkdocs build"))
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [*shlex.split(build), "--site-dir", str(out)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings)
    return out


def test_the_readme_shows_the_site_commands() -> None:
    commands = readme_site_commands()
    assert any(c.startswith("mkdocs serve") for c in commands), commands
    assert "mkdocs build --strict" in commands, commands


def test_the_site_builds_strict_in_both_languages(site: Path) -> None:
    for language in LANGUAGES:
        assert (site / language / "index.html").is_file(), language
        for page in ["architecture", "boutique", "performance", "decisions/0011-own-mqtt-client"]:
            assert (site / language / page / "index.html").is_file(), (language, page)
    assert 'lang="fr"' in (site / "fr/index.html").read_text()


def test_translated_pages_exist_in_both_languages(site: Path) -> None:
    twins = sorted(
        p for p in DOCS.rglob("*.fr.md") if "node_modules" not in p.parts and "slides" not in p.parts
    )
    for twin in twins:
        assert twin.with_name(twin.name.replace(".fr.md", ".md")).is_file(), f"{twin} has no English page"
    translated = {str(t.relative_to(DOCS)).removesuffix(".fr.md") for t in twins}
    assert set(TRANSLATED) <= translated, f"untranslated: {set(TRANSLATED) - translated}"
    for page in TRANSLATED:
        english = (site / page / "index.html").read_text()
        french = (site / "fr" / page / "index.html").read_text()
        assert 'lang="en"' in english and 'lang="fr"' in french, page
        assert h1(english) != h1(french), f"fr/{page} shows the English page: {h1(french)}"


def h1(html: str) -> str:
    found = re.search(r"<h1[^>]*>(.*?)</h1>", html, re.DOTALL)
    assert found, "no <h1>"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def code_blocks(page: Path) -> list[str]:
    """The fenced code blocks of a page, their indentation removed."""
    return [
        "\n".join(line.strip() for line in body.splitlines())
        for _, _, body in FENCE.findall(page.read_text())
    ]


@pytest.mark.parametrize("page", TRANSLATED)
def test_a_translation_shows_the_same_commands(page: str) -> None:
    english, french = code_blocks(DOCS / f"{page}.md"), code_blocks(DOCS / f"{page}.fr.md")
    assert len(english) >= 5, english
    assert english == french


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.targets.append(value)


def test_internal_links_of_the_site_resolve(site: Path) -> None:
    broken: list[str] = []
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 2 * 20, len(pages)
    for page in pages:
        parser = Links()
        parser.feed(page.read_text())
        for target in parser.targets:
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or target.startswith(("#", "/", "mailto:")) or not parts.path:
                continue
            resolved = (page.parent / unquote(parts.path)).resolve()
            if resolved.is_dir():
                resolved = resolved / "index.html"
            if not resolved.is_file() or not resolved.is_relative_to(site.resolve()):
                broken.append(f"{page.relative_to(site)}: {target}")
    assert not broken, "\n".join(broken[:50])


def concepts_commands() -> list[list[str]]:
    lines = [line for block in code_blocks(DOCS / "concepts.md") for line in block.splitlines() if line]
    return [shlex.split(line) for line in lines]


def test_the_concepts_commands_are_real() -> None:
    """Each `archipel` line parses as the CLI parses it (a real command, options it has, values it
    takes); each script exists. What the commands do is tested where their own docs are."""
    commands = concepts_commands()
    archipel = [c for c in commands if c[0] == "archipel"]
    assert len(archipel) >= 15, commands
    for command in commands:
        if command[0] == "python":
            assert (ROOT / command[1]).is_file(), command
        elif command[0] == "mosquitto_sub":
            assert "$(archipel broker-login)" in " ".join(command), command
    root = typer.main.get_command(cli)  # typer's own click: its classes are not the click package's
    for command in archipel:
        found, args = root, command[1:]
        while (subcommands := getattr(found, "commands", None)) is not None:
            assert args and args[0] in subcommands, (command, sorted(subcommands))
            found, args = subcommands[args[0]], args[1:]
        assert found is not root, command
        try:
            found.make_context(" ".join(command[:2]), list(args))  # parses, runs nothing
        except Exception as error:  # a usage error: no such option, a bad value, a missing argument
            pytest.fail(f"{shlex.join(command)}: {error}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_mkdocs_serve_serves_the_site() -> None:
    serve = next(c for c in readme_site_commands() if c.startswith("mkdocs serve"))
    port = free_port()
    server = subprocess.Popen(
        [*shlex.split(serve), "--dev-addr", f"127.0.0.1:{port}", "--no-livereload"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        page = ""
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/fr/concepts/", timeout=2) as answer:
                    page = answer.read().decode()
                break
            except OSError:
                time.sleep(0.2)  # the first build takes seconds: poll until it answers
        assert server.poll() is None, server.communicate()[1]
        assert "Communication asynchrone" in page, page[:300]
    finally:
        server.terminate()
        server.wait(timeout=30)
