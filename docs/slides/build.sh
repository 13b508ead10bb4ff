#!/usr/bin/env bash
# Renders the presentation, English and French, with the Marp CLI pinned in package-lock.json
# (installed by scripts/setup.sh, or `npm ci` here) and the machine's Chromium, into build/:
# archipel.{en,fr}.html (with img/ beside them), .pdf, and .001.png, the title slide.
#
# CHROME_PATH names the browser (default /usr/bin/chromium); none is ever downloaded.
set -euo pipefail
cd "$(dirname "$0")"

MARP=node_modules/.bin/marp
OUT=build
export CHROME_PATH=${CHROME_PATH:-/usr/bin/chromium}
# Chromium refuses to run as root with its sandbox on; Marp passes --no-sandbox when this is set.
if [ "$(id -u)" = 0 ]; then export CHROME_NO_SANDBOX=1; fi

[ -x "$MARP" ] || { echo "build.sh: no Marp CLI in docs/slides/node_modules: run scripts/setup.sh, which needs npm (apt-get install nodejs npm)" >&2; exit 1; }
[ -x "$CHROME_PATH" ] || { echo "build.sh: no browser at $CHROME_PATH: install chromium (apt-get install chromium) or set CHROME_PATH" >&2; exit 1; }

rm -rf "$OUT"  # nothing stale: what is there after a run, that run wrote
mkdir -p "$OUT/img"
# The slides show the docs' pictures as ../img/ (right beside the Markdown); the HTML takes copies
# under build/img/, so that build/ can be published on its own.
cp ../img/dashboard.png ../img/shop-latency.svg "$OUT/img/"

for lang in en fr; do
  src=archipel.$lang.md
  # --allow-local-files: the browser reads the pictures from disk for the PDF and the PNG.
  "$MARP" --no-config-file "$src" -o "$OUT/archipel.$lang.html"
  sed -i 's#src="\.\./img/#src="img/#g' "$OUT/archipel.$lang.html"
  "$MARP" --no-config-file "$src" --pdf --allow-local-files -o "$OUT/archipel.$lang.pdf"
  "$MARP" --no-config-file "$src" --image png --allow-local-files -o "$OUT/archipel.$lang.001.png"
done
echo "build.sh: wrote $(cd "$OUT" && echo archipel.*) in docs/slides/$OUT"
