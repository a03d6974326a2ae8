#!/usr/bin/env bash
# Start the position service.
#   ./start.sh              development: embedded PostgreSQL in ./.data/ unless DATABASE_URL is
#                           set; without JWT_SECRET a development secret is made and an admin and
#                           a user token are printed
#   ./start.sh production   refuses to start without DATABASE_URL and JWT_SECRET (or a public
#                           key); several workers (WORKERS, default: the number of cores, >= 2)
# Other settings come from the environment (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
case "${1:-development}" in
    development) exec .venv/bin/python -m api serve ;;
    production) exec .venv/bin/python -m api serve --production ;;
    *) echo "usage: ./start.sh [production]" >&2; exit 2 ;;
esac
