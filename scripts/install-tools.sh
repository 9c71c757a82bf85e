#!/usr/bin/env bash
# Installs the non-Python tools the test suite drives (helm, promtool, hadolint) into .tools/bin.
# Filled in by the deploy work; a no-op until then.
set -euo pipefail
mkdir -p .tools/bin
