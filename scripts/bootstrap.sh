# Sourced by start.sh and test.sh: makes ./.venv from a lock file, pinned with hashes
# (scripts/lock.sh refreshes them): LOCK=requirements.lock, what the service runs with, or
# requirements-test.lock, that and the test tools. Quick when nothing changed: it installs again
# only when the lock file or pyproject.toml does.
set -euo pipefail

python=${PYTHON:-python3}
lock=${LOCK:-requirements.lock}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

stamp=".venv/.installed-$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "installing $lock into ./.venv ..." >&2
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" --require-hashes -r "$lock"
    "${pip[@]}" --no-deps -e .
    rm -f .venv/.installed-*
    touch "$stamp"
fi
