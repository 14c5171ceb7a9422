#!/usr/bin/env bash
# Lint, then run the whole test suite (slow and real-model tests included).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test
ruff check .
ruff format --check .
exec python -m pytest -q "$@"
