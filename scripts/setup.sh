#!/usr/bin/env bash
# Installs everything Archipel, its tests and the reference shop need. Safe to run again:
# each step is skipped when what it installs is already there.
#
# Python packages go into the project's virtual environment .venv, never into the system
# interpreter: Debian 12's python3 refuses `pip install` outside a venv (PEP 668,
# "externally-managed-environment"). ARCHIPEL_PYTHON names the interpreter that creates the venv
# (default: python3 from PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PYTHON=${ARCHIPEL_PYTHON:-python3}
STAMP=$VENV/.archipel-setup  # what the last successful pip install installed (see `wanted` below)

apt_updated=
apt_update_once() { [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }; }
apt_install() {
  echo "setup: installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt_update_once
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_apt=()
command -v mosquitto >/dev/null || need_apt+=(mosquitto mosquitto-clients)
command -v curl >/dev/null || need_apt+=(curl)
# promtool checks the generated prometheus.yml and dashboard queries, prometheus scrapes a worker
# in a test (where systemd runs, Debian also starts its own service on :9090).
command -v promtool >/dev/null || need_apt+=(prometheus)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# npm installs the Marp CLI that renders the presentation (docs/slides) with that Chromium.
command -v npm >/dev/null || need_apt+=(nodejs npm)
# Playwright's bundled node (the browser tests drive /usr/bin/chromium with it) needs libatomic.so.1.
[[ "$(dpkg-query -W -f='${Status}' libatomic1 2>/dev/null)" == *"ok installed"* ]] || need_apt+=(libatomic1)
if [ -z "${ARCHIPEL_PYTHON:-}" ] && ! command -v python3 >/dev/null; then
  need_apt+=(python3 python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
fi

command -v "$PYTHON" >/dev/null || { echo "setup: no Python interpreter '$PYTHON'" >&2; exit 1; }

# A venv is usable when its interpreter runs and has pip (a failed `python -m venv` leaves one without).
venv_usable() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' 2>/dev/null; }

if [ -n "${ARCHIPEL_PYTHON:-}" ] && venv_usable; then
  describe='import sys; print(sys.base_prefix, *sys.version_info[:3])'
  if [ "$("$VENV/bin/python" -c "$describe")" != "$("$PYTHON" -c "$describe")" ]; then
    echo "setup: $VENV was made by another interpreter than ARCHIPEL_PYTHON=$PYTHON: recreating it"
    rm -rf "$VENV"
  fi
fi

if ! venv_usable; then
  if [ -e "$VENV" ]; then
    echo "setup: $VENV is incomplete or its interpreter is gone: recreating it"
    rm -rf "$VENV"
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Archipel needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1) (set ARCHIPEL_PYTHON)" >&2
    exit 1
  fi
  # Debian ships venv's ensurepip separately, in python3-venv / python3.X-venv.
  if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    command -v apt-get >/dev/null || {
      echo "setup: $PYTHON cannot create virtual environments (no ensurepip) and there is no apt-get" >&2
      exit 1
    }
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    venv_packages=(python3-venv)
    apt_update_once  # so that apt-cache knows python3.X-venv
    if apt-cache show "python$version-venv" >/dev/null 2>&1; then venv_packages+=("python$version-venv"); fi
    apt_install "${venv_packages[@]}"
  fi
  echo "setup: creating $VENV with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  if ! "$PYTHON" -m venv "$VENV"; then
    rm -rf "$VENV"
    echo "setup: could not create $VENV with $PYTHON" >&2
    exit 1
  fi
fi

# Reinstall when pyproject.toml changed, or the checkout moved (the install is editable).
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) $PWD"
if [ -x "$VENV/bin/archipel" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; then
  echo "setup: $VENV is up to date"
else
  echo "setup: $VENV/bin/python -m pip install -e .[dev]"
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
  echo "$wanted" >"$STAMP"
fi

# The presentation's tools, pinned in docs/slides/package-lock.json: `npm ci` from the npm registry
# when the lock changed. Marp uses /usr/bin/chromium (docs/slides/build.sh): never download one.
SLIDES=docs/slides
SLIDES_STAMP=$SLIDES/node_modules/.archipel-setup  # the lock the last successful npm ci installed
slides_wanted=$(sha256sum "$SLIDES/package-lock.json" | cut -d' ' -f1)
if [ -x "$SLIDES/node_modules/.bin/marp" ] && [ -f "$SLIDES_STAMP" ] && [ "$(cat "$SLIDES_STAMP")" = "$slides_wanted" ]; then
  echo "setup: $SLIDES/node_modules is up to date"
else
  echo "setup: npm ci in $SLIDES"
  (cd "$SLIDES" && PUPPETEER_SKIP_DOWNLOAD=1 PUPPETEER_SKIP_CHROMIUM_DOWNLOAD=1 \
    npm ci --no-audit --no-fund --loglevel=error)
  echo "$slides_wanted" >"$SLIDES_STAMP"
fi

# The shop's shipping service on Node.js (examples/boutique/shipping-node), pinned in its
# package-lock.json: `npm ci` when the lock changed. tests/boutique/test_shipping_node.py runs it.
SHIPPING_NODE=examples/boutique/shipping-node
SHIPPING_NODE_STAMP=$SHIPPING_NODE/node_modules/.archipel-setup  # the lock the last npm ci installed
shipping_node_wanted=$(sha256sum "$SHIPPING_NODE/package-lock.json" | cut -d' ' -f1)
if [ -d "$SHIPPING_NODE/node_modules/mqtt" ] && [ -f "$SHIPPING_NODE_STAMP" ] \
  && [ "$(cat "$SHIPPING_NODE_STAMP")" = "$shipping_node_wanted" ]; then
  echo "setup: $SHIPPING_NODE/node_modules is up to date"
else
  echo "setup: npm ci in $SHIPPING_NODE"
  (cd "$SHIPPING_NODE" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$shipping_node_wanted" >"$SHIPPING_NODE_STAMP"
fi
