# Shared by the README's commands: create or reuse the repo-local virtual environment and
# install the project into it. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "[igds] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
STAMP="$VENV/.igds-installed-$1"
# Reinstall when setup.cfg changed since the last install of this flavour.
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.cfg" -nt "$STAMP" ]; then
    echo "[igds] installing igds-jax ($1) into $VENV"
    if [ "$1" = "test" ]; then
        # torch is pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
        "$VENV/bin/pip" install -q "torch==2.13.0"
        "$VENV/bin/pip" install -q -e "$ROOT[test]"
    else
        "$VENV/bin/pip" install -q -e "$ROOT"
    fi
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
