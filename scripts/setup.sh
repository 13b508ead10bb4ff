#!/usr/bin/env bash
# Installs everything Archipel, its tests and the reference shop need. Safe to run again:
# each step is skipped when what it installs is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null || need_apt+=(mosquitto mosquitto-clients)
command -v curl >/dev/null || need_apt+=(curl)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

echo "setup: pip install -e .[dev]"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
