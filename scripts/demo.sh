#!/bin/sh
# The main job: a sample agent in a process-level sandbox, its kernel events
# streamed live, then a summary.
set -eu
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
agent="$(cd "$(dirname "$0")/.." && pwd)/examples/sample_agent.py"
workspace="$(mktemp -d /tmp/alcub3-demo.XXXXXX)"
trap 'rm -rf "$workspace"' EXIT
cd "$workspace"
echo "== alcub3 run --agent-id demo-agent -- python3 sample_agent.py (workspace $workspace)"
# Debian's python3 directly (a version manager's shim would add its own shell scripts to the trace).
python=/usr/bin/python3
[ -x "$python" ] || python=python3
"$bin" run --agent-id demo-agent -- "$python" "$agent"
