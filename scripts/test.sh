#!/usr/bin/env bash
# Set up (idempotent) and run every test: the C tests natively, under ASan+UBSan and under TSan,
# then the Python suite (unit, integration with real daemons, mosquitto, SIGKILL loops).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec make --no-print-directory test-all
