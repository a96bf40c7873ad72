#!/usr/bin/env bash
# Run the web prototype's browser test: headless Chromium (Debian package) driven by playwright-core,
# the model in onnxruntime-web and LiteRT.js (npm). Installs them when missing.
#
#   android_demo/web/run_browser_tests.sh BUNDLE_DIR [EXPECTED_JSON] [OUT_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BUNDLE="$1"; EXPECTED="${2:-}"; OUT="${3:-$HERE/.test-out}"
if ! command -v chromium >/dev/null && [ -z "${CHROMIUM:-}" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing chromium (apt)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi
if [ ! -d "$HERE/node_modules/onnxruntime-web" ] || [ ! -d "$HERE/node_modules/playwright-core" ] || [ ! -d "$HERE/node_modules/@litertjs/core" ]; then
  echo "installing onnxruntime-web, @litertjs/core and playwright-core (npm)"
  (cd "$HERE" && npm ci --no-audit --no-fund --silent)
fi
export CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
node "$HERE/test/e2e.mjs" --bundle "$BUNDLE" --out "$OUT" ${EXPECTED:+--expected "$EXPECTED"}
