#!/usr/bin/env bash
# Start the position service. With no DATABASE_URL it runs on an embedded PostgreSQL whose data
# stays in ./.data/ between runs. Settings come from the environment (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec .venv/bin/python -m api serve "$@"
