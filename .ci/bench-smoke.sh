#!/usr/bin/env bash
# Smoke run of the side-by-side benchmarks (bench/, docs/benchmarks.md):
# every section with tiny counts, a few seconds, so that the harness, the
# benchserver/benchclient binaries and the in-process benchmarks keep
# working. The numbers of a smoke run mean nothing; it fails only when
# the harness breaks.
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp)
trap 'rm -f "$out"' EXIT

go test -count=1 -run 'Test' -bench . -benchtime 10x ./bench/
timeout 300 go run ./bench/cmd/bench -smoke -out "$out"

for section in "Goals" "Pass-through" "Upgrade" "Connect rate" "Echo, 128 B" "Idle footprint" \
  "Keep-alive cost" "Stack per idle connection" "Churn" \
  "HTTP/2: connect rate and echo over h2 beside HTTP/1.1" "What is left, and why"; do
  if ! grep -q "## .*$section" "$out"; then
    echo "bench-smoke: section \"$section\" missing from the report" >&2
    cat "$out" >&2
    exit 1
  fi
done
echo "bench-smoke: report complete ($(grep -c '^|' "$out") table rows)"
