#!/usr/bin/env bash
# Short soak: 2,000 sockets echoing for 20 s, clients in a separate process.
# The full run (10,000 sockets, 60 s) is in docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CHIWS_SOAK=1 \
CHIWS_SOAK_CONNS="${CHIWS_SOAK_CONNS:-2000}" \
CHIWS_SOAK_DURATION="${CHIWS_SOAK_DURATION:-20s}" \
  go test -count=1 -run '^TestSoak$' -v -timeout 5m ./soak
