#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind (callgrind), for machines
# whose virtual CPU has no performance counters (`perf stat -e instructions` says "not
# supported", so cost.sh reports n/a). The count is exact and repeatable for a binary and its
# input, whatever else the machine does: it is how a request-path change is judged there.
#
# Each binary runs under callgrind twice, serving FEW and then MANY requests (h2load over
# HTTP/1.1, keep-alive, 8 connections) through a dedicated listener to one nginx upstream; the
# difference in instructions over the difference in requests is the cost of a request, with
# start-up and shutdown taken out. Several binaries are measured in the same run, in turn:
# name each more than once, since the count still moves between runs (how many event-loop
# turns the requests share depends on timing, even under valgrind). One-time initialisations
# (`once_cell`, inclusive) are not counted: quanta, the metrics crate's clock, calibrates
# itself there for a while at start, a varying count of several million instructions that
# moved the result by up to 1,000 a request.
#
# Usage: bench/instructions.sh [BINARY...]   (default: a fresh release build)
#        FEW=2000 MANY=12000 bench/instructions.sh old/outrigger target/release/outrigger
set -euo pipefail
cd "$(dirname "$0")/.."

FEW=${FEW:-2000}
MANY=${MANY:-12000}
. bench/common.sh
install_missing nginx:nginx-light valgrind:valgrind h2load:nghttp2-client
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then bins=("$BIN"); fi

UP=$(port)
start_upstream_nginx "$UP"
wait_port "$UP"

# Instructions (Ir) of one run of binary $1 serving $2 requests.
count() {
  local bin=$1 n=$2 out adm
  out=$(port); adm=$(port)
  OUTRIGGER_WORKER_THREADS=1 OUTRIGGER_PIN_WORKERS=off OUTRIGGER_LISTEN=127.0.0.1:$(port) \
    OUTRIGGER_ADMIN_LISTEN=127.0.0.1:$adm OUTRIGGER_UPSTREAMS="orders=127.0.0.1:$out" \
    OUTRIGGER_DISCOVERY="static:orders=127.0.0.1:$UP" OUTRIGGER_LOG=warn OUTRIGGER_SHUTDOWN_DELAY=0s \
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" 2>"$work/vg.log" &
  local vg=$!
  for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$out") 2>/dev/null && break; sleep 0.1; done
  h2load --h1 -n "$n" -c 8 -t 1 "http://127.0.0.1:$out/" > "$work/h2load.log"
  grep -q "$n succeeded" "$work/h2load.log" || { cat "$work/h2load.log" >&2; exit 1; }
  kill -TERM "$vg"; wait "$vg" || true
  local total once
  total=$(grep -m1 "^summary:" "$work/cg.out" | awk '{print $2}')
  once=$(callgrind_annotate --inclusive=yes "$work/cg.out" 2>/dev/null \
    | awk '/once_cell::imp::initialize_or_wait/ {gsub(",", "", $1); print $1; exit}')
  echo $((total - ${once:-0}))
}

echo "user-space instructions per request (callgrind, $FEW and $MANY requests, one worker)"
echo "| binary | instructions per request |"
echo "|---|---|"
for bin in "${bins[@]}"; do
  few=$(count "$bin" "$FEW")
  many=$(count "$bin" "$MANY")
  python3 -c "print(f'| $bin | {($many - $few) / ($MANY - $FEW):,.0f} |')"
done
