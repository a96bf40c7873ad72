#!/usr/bin/env bash
# Copy an edge bundle (and the schema it is checked against) into the app's assets.
#   android_demo/app/prepare_assets.sh runs/default/bundle
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BUNDLE="${1:?usage: prepare_assets.sh BUNDLE_DIR}"
[ -f "$BUNDLE/manifest.json" ] || { echo "$BUNDLE has no manifest.json (run edge-rec export first)" >&2; exit 2; }
ASSETS="$HERE/app/src/main/assets"
rm -rf "$ASSETS/bundle"
mkdir -p "$ASSETS"
cp -r "$BUNDLE" "$ASSETS/bundle"
rm -rf "$ASSETS"/bundle/models/*.mlpackage "$ASSETS"/bundle/models/*.pte   # Core ML and ExecuTorch are not used on Android
cp "$HERE/../../edge_rec/bundle.schema.json" "$ASSETS/bundle.schema.json"
echo "copied $BUNDLE into $ASSETS/bundle"
