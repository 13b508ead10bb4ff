"""docs/security.md's "Try it on the shop" commands, run as written against the shop as `make
shop` runs it (on free ports: the doc's 8007 and 1884 are swapped for the real ones). Each command
must give what the comment under it says."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from archipel._deploy.acl import broker_users
from archipel._deploy.plan import plan
from archipel._loader import load_app
from archipel._security.secrets import mqtt_password
from tests.test_cli import ROOT, wait_for_status
from tests.test_readme_commands import start_shop

DOC = ROOT / "docs" / "security.md"
app = load_app(str(ROOT / "examples/boutique/boutique/app.py") + ":app")


def processes() -> dict[str, list[str]]:
    return {p.name: list(p.services) for p in plan(app, "microservices", None, None)}


def doc_commands() -> list[tuple[str, str]]:
    """(command, the comment under it) of every sh block of the "Try it on the shop" section."""
    section = DOC.read_text().split("## Try it on the shop", 1)[1].split("\n## ", 1)[0]
    pairs: list[tuple[str, str]] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        lines = [line for line in block.splitlines() if line.strip()]
        for index, line in enumerate(lines):
            if not line.startswith("#"):
                following = lines[index + 1] if index + 1 < len(lines) else ""
                pairs.append((line, following.removeprefix("# ") if following.startswith("#") else ""))
    return pairs


def readme_commands() -> list[str]:
    """The commands of the README's "Who can call what" block, comments dropped."""
    section = (ROOT / "README.md").read_text().split("## Who can call what", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def expected(comment: str) -> str:
    """What the output must contain: the comment up to an ellipsis or a parenthesised aside."""
    return re.split(r"\.\.\.|\s{2,}\(", comment, maxsplit=1)[0].strip()


def test_the_security_commands_of_the_docs_do_what_they_say(tmp_path: Path) -> None:
    commands = doc_commands()
    assert len(commands) >= 5, commands
    state = tmp_path / ".archipel"  # the default state folder of commands run in tmp_path
    runner = start_shop(state)
    try:
        status = wait_for_status(state, runner, timeout=90)
        status_text = json.dumps(status)
        payment = next(p["url"] for p in status["processes"] if "payment" in p["services"])
        broker_port = status["broker"].rsplit(":", 1)[1]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for command, comment in commands:
            line = command.replace("http://127.0.0.1:8007", payment).replace("-p 1884", f"-p {broker_port}")
            result = subprocess.run(
                ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )
            said = result.stdout + result.stderr
            if command.startswith("mosquitto_sub"):  # logged in, read-only; -W ends it with code 27
                assert result.returncode in (0, 27) and "Connection error" not in said, (command, said)
            elif command.startswith("mosquitto_pub"):
                assert result.returncode != 0 and expected(comment) in said, (command, said)
            elif "/metrics" in command:
                assert result.returncode == 0 and "archipel_rpc_requests_total" in said, (command, said[:300])
            else:
                assert result.returncode == 0 and expected(comment) in said, (command, comment, said)
        for command in readme_commands():
            line = command.replace("ARCHIPEL_SECRET=...", "ARCHIPEL_SECRET=readme-secret-0123456789abcdef")
            line = line.replace(" app.py ", f" {ROOT / 'examples/boutique/boutique/app.py'}:app ")
            result = subprocess.run(
                ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, (command, result.stdout + result.stderr)
            if command.startswith("archipel token"):
                assert result.stdout.startswith("Bearer v1.operator.payment."), result.stdout
            elif command.startswith("archipel call"):
                assert result.stdout.strip() == "[]", result.stdout
            else:  # broker-auth: the files an external Mosquitto includes
                files = {path.name for path in (tmp_path / "broker-auth").iterdir()}
                assert {"passwords", "acl", "mosquitto.conf"} <= files, files
                assert "readme-secret" not in (tmp_path / "broker-auth" / "passwords").read_text()
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
        output, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0, output
    kept = state / "data" / "boutique" / "secret"  # made by `archipel run`, for its owner only
    assert kept.stat().st_mode & 0o777 == 0o600
    secret = kept.read_text().strip()
    assert len(secret) >= 32 and secret not in output  # nor in what any process printed
    assert secret not in status_text  # nor in `archipel status`
    # The broker's files hold hashes: neither the secret nor any plain password.
    passwords = [
        mqtt_password(secret.encode(), user.username) for user in broker_users(app, "boutique", processes())
    ]
    for path in (state / "data" / "boutique" / "broker").iterdir():
        if path.suffix != ".db":
            text = path.read_text()
            assert secret not in text and not any(p in text for p in passwords), path
