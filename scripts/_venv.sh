# Sourced by scripts/serve and scripts/test: create or update .venv, install the package.
# The dependencies come from requirements.lock (exact versions, checked against their hashes:
# what CI tested), then the package itself without dependencies (editable). Idempotent:
# installs again only when requirements.lock, pyproject.toml or this script changed since
# the last install. scripts/lock regenerates the lock.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 ships without ensurepip: its venv module lives in python3-venv.
        rm -rf "$VENV"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "python3 -m venv failed: installing Debian's python3-venv" >&2
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            "$PY" -m venv "$VENV"
        else
            echo "python3 -m venv failed: install python3-venv (Debian/Ubuntu) and try again" >&2
            exit 1
        fi
    fi
fi
STAMP="$VENV/.trio-sfu-installed"
HASH="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
    LOG="$VENV/install.log"
    # `pip check` fails when the lock no longer satisfies pyproject.toml (a dependency
    # added or changed there without scripts/lock).
    if ! { "$VENV/bin/python" -m pip install --quiet --upgrade pip &&
           "$VENV/bin/python" -m pip install --quiet --require-hashes -r "$ROOT/requirements.lock" &&
           "$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT" &&
           "$VENV/bin/python" -m pip check; } >"$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "installing trio-sfu into $VENV from requirements.lock failed (log above;" \
             "after changing pyproject.toml's dependencies, run scripts/lock)" >&2
        exit 1
    fi
    echo "$HASH" > "$STAMP"
fi
