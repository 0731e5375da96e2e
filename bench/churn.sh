#!/usr/bin/env bash
# Request-path latency while 10,000-endpoint updates are applied.
#
# One service with 10,000 endpoints (HAProxy answering on 127.0.0.1:20000-29999), loaded
# through the file adapter. wrk measures the proxy over keep-alive connections in alternating
# rounds: steady and churn. In both, one writer process replaces a 10,000-endpoint file every
# 250 ms (INTERVAL); in the steady round it is a file Outrigger does not watch, in the churn
# round it is Outrigger's node file. With OUTRIGGER_UPDATE_SPACING=0 every replacement is a
# new 10,000-endpoint set parsed, validated, guarded, built and published, 4 times a second;
# with the default spacing Outrigger reads the file about once a second and applies its newest
# state, skipping the others. Only Outrigger's work differs between the rounds: on a 2-core
# machine already busy with wrk, HAProxy and the proxy, merely waking a writer 4 times a second
# moves p99, so the steady round must carry the same disturbance.
# CHANGE=metadata (default): every endpoint's metadata changes from one file to the next, so
# each read is a real, applied update (the script checks the applied-update counter), while
# the hash ring keeps sending the benchmark's key to the same node, so the keep-alive pool is
# not what is measured. CHANGE=members: a rolling deploy, 1% of the endpoints leave and
# another 1% join with every replacement (and their metadata changes too). CHANGE=none: the
# churn round writes the unwatched file too, so both rounds are alike and the ratio shows the
# benchmark's own noise.
#
# Usage: bench/churn.sh [--smoke]   (--smoke: 1-second rounds, one worker count, 1,000 endpoints)
# Settings from the environment: ENDPOINTS (10000), CHANGE, POLICY, CONNS, WRK_THREADS, WORKERS,
# ROUNDS (3), INTERVAL (seconds between two replacements of the file, 0.25). Odd rounds measure
# steady first, even rounds churn first, so neither phase always runs second; the ratio is
# reported of the medians and round by round.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}; DURATION=8; POLICY=${POLICY:-ring_hash:header:x-user}; ENDPOINTS=${ENDPOINTS:-10000}
CHANGE=${CHANGE:-metadata}; INTERVAL=${INTERVAL:-0.25}
# Load: by default the proxy benchmark's, which saturates 2 cores; CONNS=4 WRK_THREADS=1 for a
# lighter one.
CONNS=${CONNS:-64}; WRK_THREADS=${WRK_THREADS:-2}; WORKERS_LIST=${WORKERS:-1 2}
# The smoke round keeps the script working with 1,000 endpoints, so it fits any file limit.
if [ "${1:-}" = "--smoke" ]; then ROUNDS=1; DURATION=1; WORKERS_LIST="1"; ENDPOINTS=1000; fi

. bench/common.sh
install_missing wrk:wrk haproxy:haproxy
HAPROXY=$(sbin haproxy)
# A listening port per endpoint, and the connections.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# HAProxy needs about two descriptors a connection on top of the listeners.
MAXCONN=$(( ($(ulimit -n) - ENDPOINTS - 200) / 2 ))
if [ "$MAXCONN" -lt 200 ]; then
  echo "churn.sh: $ENDPOINTS endpoints need more open files than 'ulimit -n' allows ($(ulimit -n))" >&2; exit 1
fi
[ "$MAXCONN" -gt 4000 ] && MAXCONN=4000

FIRST=20000; LAST=$((FIRST + ENDPOINTS - 1))
cat > "$work/upstream.cfg" <<CONF
global
  nbthread 1
  maxconn $MAXCONN
defaults
  mode http
  timeout client 30s
frontend up
  bind 127.0.0.1:$FIRST-$LAST
  http-request return status 200 content-type text/plain string "hello from upstream"
CONF
"$HAPROXY" -f "$work/upstream.cfg" -db & pids+=($!)
wait_port "$FIRST"; wait_port "$LAST"

# STATES node files, each differing from the next in every endpoint's metadata (and for
# CHANGE=members, in which 1% of the ports they list: a rolling deploy). The writer cycles
# through them. Seven, a prime, so that however often Outrigger reads the file (its update
# spacing reads a 10,000-endpoint file about once a second), a read never finds the state the
# previous read found, as it would with two files alternating every 250 ms.
STATES=7
python3 - "$work" "$FIRST" "$LAST" "$CHANGE" "$STATES" <<'PY'
import json, sys
work, first, last, change, states = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
for k in range(states):
    ports = range(first, last + 1)
    if change == "members":
        ports = [p for p in ports if p % 100 != k]
    nodes = [{"address": f"127.0.0.1:{p}", "metadata": {"rev": str(k)}} for p in ports]
    with open(f"{work}/nodes-{k}.json", "w") as f:
        json.dump({"services": {"orders": nodes}}, f)
PY
cp "$work/nodes-0.json" "$work/nodes.json"

applied() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^outrigger_discovery_updates_total\{.*result="applied"/ {s+=$2} END {print s+0}'; }

# One wrk run; prints "rps p50_ms p99_ms".
measure() {
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: orders' -H 'x-user: 42' "http://127.0.0.1:$1/" > "$work/wrk.out" 2>&1
  wrk_summary "$work/wrk.out"
}

# Replaces $1 every INTERVAL seconds with the next of the node files, until stop_writer. One
# process, no forks: a shell loop of cp and mv disturbed the measurement more than the updates
# did. The cycle goes on from the clock, so a phase does not start by writing what the last
# one left.
writer() {
  python3 - "$work" "$1" "$INTERVAL" "$STATES" <<'PY' &
import os, sys, time
work, target, interval, states = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
data = [open(f"{work}/nodes-{k}.json", "rb").read() for k in range(states)]
i = int(time.time() / interval)
while True:
    with open(f"{work}/nodes.tmp", "wb") as f:
        f.write(data[i % states])
    os.replace(f"{work}/nodes.tmp", f"{work}/{target}")
    i += 1
    time.sleep(interval)
PY
  writer_pid=$!
  pids+=("$writer_pid")
}
stop_writer() { kill "$writer_pid"; wait "$writer_pid" 2>/dev/null || true; }

# One phase of a round against the Outrigger on $OUT (admin $ADM): each appends its wrk result
# to its list; the churn phase also counts the updates Outrigger applied.
steady_phase() {
  writer unwatched.json
  steady+="$(measure "$OUT");"
  stop_writer
}
churn_phase() {
  local before; before=$(applied "$ADM")
  if [ "$CHANGE" = none ]; then writer unwatched.json; else writer nodes.json; fi
  churned+="$(measure "$OUT");"
  stop_writer
  sleep 0.3
  updates=$((updates + $(applied "$ADM") - before))
}

echo "churn benchmark: $ENDPOINTS endpoints, $CHANGE changes every ${INTERVAL}s, policy $POLICY, wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s, $ROUNDS alternating rounds, median shown"
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for n in $WORKERS_LIST; do
  OUT=$(port); ADM=$(port)
  OUTRIGGER_WORKER_THREADS=$n OUTRIGGER_LISTEN=127.0.0.1:$OUT OUTRIGGER_ADMIN_LISTEN=127.0.0.1:$ADM \
    OUTRIGGER_UPSTREAMS=orders OUTRIGGER_DISCOVERY="file://$work/nodes.json" OUTRIGGER_FILE_POLL=50ms \
    OUTRIGGER_LB="$POLICY" OUTRIGGER_LOG=warn "$BIN" & out_pid=$!
  pids+=("$out_pid")
  wait_port "$OUT"
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$ADM/ready" >/dev/null && break; sleep 0.05; done
  steady=""; churned=""; updates=0
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then steady_phase; churn_phase; else churn_phase; steady_phase; fi
  done
  python3 - "$n" "$steady" "$churned" "$updates" "$ROUNDS" "$DURATION" "$ENDPOINTS" "$CHANGE" <<'PY'
import statistics, sys
n, steady, churned, updates, rounds, duration, endpoints, change = sys.argv[1:]
def runs(raw):
    return [list(map(float, r.split())) for r in raw.split(";") if r.strip()]
def med(raw):
    return [statistics.median(col) for col in zip(*runs(raw))]
s, c = med(steady), med(churned)
print(f"\n{n} worker(s): {int(updates)} updates of {int(endpoints):,} endpoints applied during {int(rounds) * int(duration)} s of churn")
print("| phase | req/s | p50 (ms) | p99 (ms) |")
print("|---|---|---|---|")
print(f"| steady | {s[0]:,.0f} | {s[1]:.3f} | {s[2]:.3f} |")
print(f"| churn | {c[0]:,.0f} | {c[1]:.3f} | {c[2]:.3f} |")
print(f"churn / steady: req/s {c[0]/s[0]:.2f}x, p99 {c[2]/s[2]:.2f}x")
# Round by round: each round measures both phases back to back.
p99 = sorted(b[2] / a[2] for a, b in zip(runs(steady), runs(churned)))
higher = sum(r > 1 for r in p99)
print(f"  by round: p99 {p99[0]:.2f}-{p99[-1]:.2f}x (median {statistics.median(p99):.2f}x), "
      f"churn's p99 higher in {higher} of {len(p99)}")
if int(updates) == 0 and change != "none":
    sys.exit("no update was applied during churn: the benchmark measured nothing")
PY
  kill "$out_pid" 2>/dev/null || true; wait "$out_pid" 2>/dev/null || true
done
