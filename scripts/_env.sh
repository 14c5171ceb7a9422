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
        # torch is only the tests' reference, pinned to 2.13.0. The pin fixes the version,
        # not the build: PyPI's Linux x86_64 wheel depends on several GB of CUDA libraries.
        # IGDS_TORCH_INDEX names a CPU-only index to take the CPU build from instead, e.g.
        # https://download.pytorch.org/whl/cpu.
        if [ -n "${IGDS_TORCH_INDEX:-}" ]; then
            "$VENV/bin/pip" install -q "torch==2.13.0" --index-url "$IGDS_TORCH_INDEX"
        else
            "$VENV/bin/pip" install -q "torch==2.13.0"
        fi
        "$VENV/bin/pip" install -q -e "$ROOT[test]"
    else
        "$VENV/bin/pip" install -q -e "$ROOT"
    fi
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
