#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the OTLP profiles tests run against (tests/otlp_collector.rs,
# tests/otlp_outage.rs): .ci/otelcol/main.go with the module versions pinned in .ci/otelcol/go.mod
# and go.sum, from the Go module proxy. Output: target/otelcol/otelcol-heapsight. Cached: skipped
# when the binary exists and was built from the same sources (a sha256 stamp next to it).
# Exit status: 0 built or cached; 1 build failed; 2 no Go toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
src=.ci/otelcol
out=target/otelcol
bin=$out/otelcol-heapsight
stamp=$(cat $src/main.go $src/go.mod $src/go.sum | sha256sum | cut -d' ' -f1)
if [ -x "$bin" ] && [ "$(cat $out/stamp 2>/dev/null)" = "$stamp" ]; then
  echo "otelcol: cached ($bin)"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "otelcol: no Go toolchain (go) on PATH" >&2
  exit 2
fi
mkdir -p $out/src
cp $src/main.go $src/go.mod $src/go.sum $out/src/
start=$(date +%s)
echo "otelcol: building from the Go module proxy (minutes on a cold module cache)"
(cd $out/src && go build -trimpath -ldflags=-s -o ../otelcol-heapsight.tmp .)
mv $out/otelcol-heapsight.tmp "$bin"
echo "$stamp" > $out/stamp
echo "otelcol: built $bin in $(( $(date +%s) - start )) s"
