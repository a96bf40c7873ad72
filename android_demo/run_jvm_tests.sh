#!/usr/bin/env bash
# Build the Kotlin core and run its JUnit 5 tests against a bundle with the real ONNX Runtime library.
#
#   android_demo/run_jvm_tests.sh BUNDLE_DIR EXPECTED_JSON ORT_LIBRARY LITERT_LIBRARY
#
# Installs what it needs when missing: a JDK, JUnit 5, JNA and Android's org.json (Debian packages),
# and the Kotlin compiler (npm package kotlin-compiler, into android_demo/.tools). Prints the JUnit
# summary and a last line "N passed, N failed"; exits non-zero when a test fails.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BUNDLE="$1"; EXPECTED="$2"; ORTLIB="$3"; LITERTLIB="$4"
SCHEMA="$HERE/../edge_rec/bundle.schema.json"
TOOLS="$HERE/.tools"; BUILD="$HERE/.build"
KOTLIN_VERSION=2.4.20
JUNIT=/usr/share/java/junit-platform-console-standalone.jar
JNA=/usr/share/java/jna.jar
JSON=/usr/share/java/json-android.jar

need=()
command -v javac >/dev/null || need+=(default-jdk-headless)
[ -f "$JUNIT" ] || need+=(junit5)
[ -f "$JNA" ] || need+=(libjna-java)
[ -f "$JSON" ] || need+=(libandroid-json-org-java)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing ${need[*]} (apt)"
  # try the package lists already there first; refresh them only when that fails
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
KOTLINC="$TOOLS/node_modules/kotlin-compiler/bin/kotlinc"
if [ ! -x "$KOTLINC" ]; then
  echo "installing kotlin-compiler@$KOTLIN_VERSION (npm)"
  npm install --prefix "$TOOLS" --no-audit --no-fund --silent "kotlin-compiler@$KOTLIN_VERSION" >/dev/null
fi
STDLIB="$TOOLS/node_modules/kotlin-compiler/lib/kotlin-stdlib.jar"

# compile only when a source changed (kotlinc takes ~30 s on 2 cores)
SRC_HASH=$(cat $(find "$HERE/core/src" -name '*.kt' | sort) | sha256sum | cut -c1-16)
if [ ! -f "$BUILD/$SRC_HASH.ok" ]; then
  rm -rf "$BUILD"; mkdir -p "$BUILD/classes"
  "$KOTLINC" -jvm-target 17 -nowarn -cp "$JNA:$JSON:$JUNIT" -d "$BUILD/classes" \
    $(find "$HERE/core/src/main/kotlin" "$HERE/core/src/jvm/kotlin" "$HERE/core/src/test/kotlin" -name '*.kt' | sort)
  touch "$BUILD/$SRC_HASH.ok"
fi

set +e
java -Djna.nosys=false -Dedgerec.bundle="$BUNDLE" -Dedgerec.schema="$SCHEMA" -Dedgerec.ortlib="$ORTLIB" -Dedgerec.litertlib="$LITERTLIB" \
  -Dedgerec.expected="$EXPECTED" -jar "$JUNIT" -cp "$BUILD/classes:$STDLIB:$JNA:$JSON" \
  --select-package edgerec.core --details=tree --disable-banner 2>&1 | tee "$BUILD/junit.log"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -oE '\[ *[0-9]+ tests successful' "$BUILD/junit.log" | grep -oE '[0-9]+' || echo 0)
failed=$(grep -oE '\[ *[0-9]+ tests failed' "$BUILD/junit.log" | grep -oE '[0-9]+' || echo 0)
echo "$passed passed, $failed failed"
exit $rc
