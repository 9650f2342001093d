#!/usr/bin/env bash
# DDP vs sasg over a rate-limited loopback (see benchmarks/bandwidth.py). Needs root.
# The private network namespace is removed on exit, even if Python itself is killed.
#   sudo benchmarks/bandwidth.sh --iterations 30 [--rates 100mbit,1gbit]
set -euo pipefail
cd "$(dirname "$0")/.."
NS="sasg-bw-$$"
trap 'ip netns del "$NS" 2>/dev/null || true' EXIT INT TERM HUP
"${PYTHON:-.venv/bin/python}" benchmarks/bandwidth.py --netns "$NS" "$@"
