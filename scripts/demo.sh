#!/usr/bin/env bash
# Set up (idempotent) and run the daemon on the reference backend with the bundled demo model:
# weight packages arrive through the file drop and the output climbs 0, 9, ... 81, then a rollback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/refitd demo "$@"
