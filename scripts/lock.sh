#!/usr/bin/env bash
# Refresh the lock files from the ranges in pyproject.toml: the newest releases they admit, each
# pinned with its hashes. ./start.sh, ./test.sh, the Dockerfile and CI install from these files,
# so an install does not change until this is run again (and the result committed).
#   requirements.lock       what the service runs with
#   requirements-test.lock  that, plus the test tools (the shared packages at the same versions)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"$python" -m venv "$tools"
"$tools/bin/pip" install --quiet --disable-pip-version-check pip-tools
compile=("$tools/bin/pip-compile" --quiet --generate-hashes --strip-extras --no-emit-index-url
         --no-emit-find-links
         --upgrade pyproject.toml)
"${compile[@]}" --output-file requirements.lock
"${compile[@]}" --extra test --constraint requirements.lock --output-file requirements-test.lock
echo "wrote requirements.lock and requirements-test.lock" >&2
