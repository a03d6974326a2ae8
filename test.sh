#!/usr/bin/env bash
# Run the test suite against a real PostgreSQL: TEST_DATABASE_URL, else the machine's server on
# 127.0.0.1:5432, else an embedded one. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
LOCK=requirements-test.lock  # the service's dependencies and the test tools
source scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
