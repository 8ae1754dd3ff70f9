#!/bin/sh
# The main job: a sample agent in a process-level sandbox, its kernel events
# streamed live, then a summary.
set -eu
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
agent="$(cd "$(dirname "$0")/.." && pwd)/examples/sample_agent.py"
workspace="$(mktemp -d /tmp/alcub3-demo.XXXXXX)"
trap 'rm -rf "$workspace"' EXIT
cd "$workspace"
echo "== alcub3 run -- python3 sample_agent.py (workspace $workspace)"
"$bin" run --agent-id demo-agent -- python3 "$agent"
