"""The README's main command (`make shop`) as a user runs it, on free ports instead of 8000."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.test_cli import ROOT, alive, wait_for_status


def make_variables(makefile: str) -> dict[str, str]:
    return {m[1]: m[2].strip() for m in re.finditer(r"^(\w+)\s*:?=\s*(.*)$", makefile, re.M)}


def shop_recipe() -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^shop:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None
    variables = make_variables(makefile)

    def expand(reference: re.Match[str]) -> str:
        return variables[reference[1] or reference[2]]

    return [re.sub(r"\$\((\w+)\)|\$\{(\w+)\}", expand, cmd.strip()) for cmd in recipe.group(1).splitlines()]


def shop_command() -> list[str]:
    line = next(cmd for cmd in shop_recipe() if "archipel run" in cmd)
    command = shlex.split(line)
    interpreter = ROOT / command[0]
    assert interpreter.exists(), f"{interpreter} is missing: `bash scripts/setup.sh` makes it"
    return [str(interpreter), *command[1:]]


def start_shop(state_dir: Path) -> subprocess.Popen[str]:
    """The README's main command, on free ports, its state in ``state_dir``."""
    return subprocess.Popen(
        [*shop_command(), "--port", "0", "--state-dir", str(state_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_make_shop_sets_up_then_runs_archipel_from_the_project_venv() -> None:
    recipe = shop_recipe()
    assert recipe[0] == "bash scripts/setup.sh"
    assert shlex.split(recipe[1])[:3] == [".venv/bin/python", "-m", "archipel"]
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "--break-system-packages" not in (ROOT / "scripts" / "setup.sh").read_text()


def test_readme_points_at_make_shop_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make shop" in readme and "make test" in readme
    assert ". .venv/bin/activate" in readme  # where set-up installs, and how to use it afterwards
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_main_command_runs_the_shop_as_microservices_on_the_embedded_broker(tmp_path: Path) -> None:
    command = shop_command()
    assert command[command.index("--mode") + 1] == "microservices"
    assert command[command.index("--broker") + 1] == "embedded"
    runner = start_shop(tmp_path)
    try:
        status = wait_for_status(tmp_path, runner, timeout=90)
        storefront = next(p["url"] for p in status["processes"] if "frontend" in p["services"])
        with urllib.request.urlopen(storefront + "/", timeout=10) as response:
            page = response.read().decode()
        assert response.status == 200 and "<form" in page
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
        output, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0, output
    assert f"frontend serves its pages at {storefront}/" in output.replace("\n", " ") or storefront in output
    assert len(status["processes"]) == 10 and status["broker"].startswith("mqtt://127.0.0.1:")
    # Guarded by default, and it says how to get in as the operator, without showing the secret.
    assert "internal methods need a credential" in output and "archipel token SERVICE" in output.replace(
        "\n", " "
    )
    pids = [p["pid"] for p in status["processes"]] + [status["broker_pid"]]
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # absorbs the last reaping of children after the supervisor exits
    assert not any(alive(pid) for pid in pids)
