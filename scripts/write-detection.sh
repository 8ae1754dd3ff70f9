#!/usr/bin/env bash
# Measures the behavioural models on the recorded data sets (make datasets) and
# writes the figures into docs/detection.md between its markers:
#   <!-- detection:begin --> ... <!-- detection:end -->
#
# Usage: scripts/write-detection.sh [path/to/alcub3]     (make detection)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ALCUB3=$(realpath "${1:-$ROOT/.build/debug/alcub3}")
DATASETS=$ROOT/.build/datasets
DOC=$ROOT/docs/detection.md

for set_name in train normal attack; do
    [ -d "$DATASETS/$set_name" ] || { echo "write-detection.sh: no $DATASETS/$set_name: make datasets" >&2; exit 1; }
done
if [ ! -e "$DOC" ]; then
    printf '## Results\n\n<!-- detection:begin -->\n<!-- detection:end -->\n' >"$DOC"
fi

json=$(cd "$ROOT" && "$ALCUB3" integrity evaluate-behavior --train .build/datasets/train --normal .build/datasets/normal \
    --attack .build/datasets/attack --model all --format json)

EVALUATION=$json DATASETS=$DATASETS DOC=$DOC python3 - <<'EOF'
import datetime, json, os, platform, re

result = json.loads(os.environ["EVALUATION"])
models = result.get("models") or {"alcub3": result}
datasets, doc = os.environ["DATASETS"], os.environ["DOC"]

def size(folder):
    traces = syscalls = 0
    runs = set()
    for root, _, files in os.walk(folder):
        for name in files:
            traces += 1
            runs.add(os.path.relpath(root, folder).split(os.sep)[0])
            with open(os.path.join(root, name)) as f:
                syscalls += len(f.read().split())
    return len(runs), traces, syscalls

def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"

def pct(x):
    return "%.1f %%" % (100 * x)

rates = ["0.01", "0.05", "0.10", "0.20"]
lines = [
    "Measured by `make detection` on %s (UTC): Linux %s, %d CPUs, %s." % (
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), platform.release(), os.cpu_count(), cpu_model()),
    "",
    "```",
    "alcub3 integrity evaluate-behavior --train .build/datasets/train --normal .build/datasets/normal \\",
    "    --attack .build/datasets/attack --model all --format json",
    "```",
    "",
    "| model | AUC | detection at 1 % false alarms | at 5 % | at 10 % | at 20 % | false alarms at 90 % detection |",
    "|---|---|---|---|---|---|---|",
]
for name in ["alcub3", "stide", "markov"] + sorted(set(models) - {"alcub3", "stide", "markov"}):
    if name not in models:
        continue
    m = models[name]
    label = {"stide": "STIDE (window 6)", "markov": "Markov (order 2)"}.get(name, name)
    cells = [label, "%.3f" % m["auc"]] + [pct(m["detection_at_false_alarm"][r]) for r in rates] \
        + [pct(m["false_alarm_at_detection_0.90"])]
    lines.append("| " + " | ".join(cells) + " |")
lines += ["", "| data set | runs | traces | syscalls |", "|---|---|---|---|"]
for set_name, what in [("train", "normal work, odd variants (training)"), ("normal", "normal work, even variants (held out)"),
                       ("attack", "attacks")]:
    runs, traces, syscalls = size(os.path.join(datasets, set_name))
    lines.append("| `%s`: %s | %d | %d | %d |" % (set_name, what, runs, traces, syscalls))

text = open(doc).read()
begin, end = "<!-- detection:begin -->", "<!-- detection:end -->"
if begin not in text or end not in text:
    raise SystemExit("write-detection.sh: %s lacks the markers %s and %s" % (doc, begin, end))
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
with open(doc + ".tmp", "w") as f:
    f.write(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)
os.rename(doc + ".tmp", doc)
print("\n".join(lines))
EOF
