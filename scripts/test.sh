#!/usr/bin/env bash
# Set up (idempotent) and run every test: the C tests natively, under ASan+UBSan and under TSan,
# then the Python suite (unit, integration with real daemons, mosquitto, SIGKILL loops), then
# the cross/edge proof. Fails if any test is skipped (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# A progress line whenever the run has been quiet for 25 s (one ASan-built file can take
# minutes on a busy box; debootstrap's second stage longer), and the total at the end.
exec python3 scripts/heartbeat.py --label "scripts/test.sh" --every 25 -- make --no-print-directory test-all
