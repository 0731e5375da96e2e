#!/usr/bin/env bash
# Proxy throughput and latency: Outrigger against nginx and HAProxy, same machine, same run.
#
# One fast upstream (nginx returning a small body) and, in alternating rounds, wrk over
# keep-alive connections to: the upstream directly, nginx as reverse proxy (upstream
# keepalive), HAProxy (http-reuse always) and Outrigger; first with one worker/thread each,
# then with two. Prints requests/s and p50/p99 for each (median of the rounds) and Outrigger's
# ratios to the peers, both of the medians and round by round: on a shared 2-core VM one
# round can be 30% off the next, so a claim needs the count of rounds that agree with it.
# Each round starts with a different target, so none is always measured first or last.
#
# Usage: bench/proxy.sh [--smoke]   (--smoke: one 1-second round, to keep the script working)
# Settings from the environment: ROUNDS (3), DURATION (8s), WORKERS ("1 2"), MODE (plain).
# MODE=tls: the upstream nginx answers over TLS (a CA and certificate made here with openssl,
# for the name upstream.test), and every proxy verifies it: nginx proxy_ssl_verify with session
# reuse and upstream keepalive, HAProxy `ssl verify required`, Outrigger
# OUTRIGGER_UPSTREAM_TLS=on with the CA and server name. The app side stays plain HTTP/1.1.
# MODE=h2: gRPC-style unary calls over h2c end to end. h2load (Debian nghttp2-client) sends
# POSTs with a 10-byte body and `content-type: application/grpc`, 64 connections with 10
# streams each, to an upstream nginx speaking h2c; nginx proxies with grpc_pass (upstream
# keepalive), HAProxy with `proto h2` on both sides, Outrigger with
# OUTRIGGER_UPSTREAM_PROTOCOL=h2. Latency percentiles come from h2load's per-request log.
# PLACEMENT=split (one worker/thread only): wrk and the upstream run on the last CPU and the
# proxy under test on the first, for every proxy alike. It takes the kernel's placement out of
# the comparison (which of the four busy processes shares the proxy's CPU changes from run to
# run), so what is left is each proxy's own cost and order of work. It is a diagnosis, not
# the reference setup: a sidecar shares its CPUs with whatever the machine runs.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-8s}; CONNS=64; THREADS_LIST=${WORKERS:-1 2}
MODE=${MODE:-plain}
case "$MODE" in plain|tls|h2) ;; *) echo "MODE=\"$MODE\": plain, tls or h2" >&2; exit 2 ;; esac
PLACEMENT=${PLACEMENT:-kernel}
if [ "${1:-}" = "--smoke" ]; then ROUNDS=1; DURATION=1s; THREADS_LIST="1"; fi
# Where the load side and the proxies run: taskset prefixes, empty for the kernel's choice.
LOAD_ON=(); PROXY_ON=()
case "$PLACEMENT" in
  kernel) ;;
  split)
    cpus=$(nproc)
    if [ "$cpus" -lt 2 ]; then echo "PLACEMENT=split needs 2 CPUs, this machine has $cpus" >&2; exit 2; fi
    if [ "$THREADS_LIST" != 1 ]; then echo "PLACEMENT=split measures one worker per proxy: set WORKERS=1" >&2; exit 2; fi
    LOAD_ON=(taskset -c "$((cpus - 1))"); PROXY_ON=(taskset -c 0) ;;
  *) echo "PLACEMENT=\"$PLACEMENT\": kernel or split" >&2; exit 2 ;;
esac

. bench/common.sh
install_missing wrk:wrk nginx:nginx-light haproxy:haproxy
NGINX=$(sbin nginx)
HAPROXY=$(sbin haproxy)

UP=$(port)
# How nginx listens and proxies, and HAProxy's bind options; plain HTTP/1.1 unless a mode says.
NGX_LISTEN=""; NGX_PROXY='proxy_http_version 1.1; proxy_set_header Connection "";'
HAP_BIND_OPTS=""
if [ "$MODE" = h2 ]; then
  install_missing h2load:nghttp2-client
  start_upstream_nginx_h2c "$UP" "${LOAD_ON[@]}"
  NGX_LISTEN="http2"; NGX_UP="grpc_pass grpc://up;"; NGX_PROXY=""
  HAP_SERVER_OPTS="proto h2"; HAP_BIND_OPTS="proto h2"
  OUT_ENV=(OUTRIGGER_UPSTREAM_PROTOCOL=h2)
  printf 'abcde12345' > "$work/call.bin"
elif [ "$MODE" = tls ]; then
  install_missing openssl:openssl
  make_test_pki "$work/pki" upstream.test
  start_upstream_nginx_tls "$UP" "$work/pki" "${LOAD_ON[@]}"
  # What each proxy is told about the upstream.
  NGX_UP="proxy_pass https://up; proxy_ssl_verify on; proxy_ssl_trusted_certificate $work/pki/ca.pem; proxy_ssl_name upstream.test; proxy_ssl_server_name on; proxy_ssl_session_reuse on;"
  HAP_SERVER_OPTS="ssl verify required ca-file $work/pki/ca.pem verifyhost upstream.test sni str(upstream.test)"
  OUT_ENV=(OUTRIGGER_UPSTREAM_TLS=on "OUTRIGGER_UPSTREAM_TLS_CA=$work/pki/ca.pem" OUTRIGGER_UPSTREAM_TLS_SERVER_NAME=upstream.test)
else
  start_upstream_nginx "$UP" "${LOAD_ON[@]}"
  NGX_UP="proxy_pass http://up;"
  HAP_SERVER_OPTS=""
  OUT_ENV=()
fi
wait_port "$UP"

start_peers() { # $1 = workers/threads
  local n=$1
  NGX=$(port); HAP=$(port); OUT=$(port); ADM=$(port)
  mkdir -p "$work/ngx$n"
  cat > "$work/ngx$n/nginx.conf" <<CONF
worker_processes $n;
daemon off;
pid $work/ngx$n/nginx.pid;
error_log $work/ngx$n/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX $NGX_LISTEN;
    location / { $NGX_UP $NGX_PROXY }
  }
}
CONF
  "${PROXY_ON[@]}" "$NGINX" -c "$work/ngx$n/nginx.conf" -p "$work/ngx$n" & pids+=($!)
  haproxy_proxy_config "$work/haproxy$n.cfg" "$HAP" "$UP" "$n" "$HAP_SERVER_OPTS" "$HAP_BIND_OPTS"
  "${PROXY_ON[@]}" "$HAPROXY" -f "$work/haproxy$n.cfg" -db & pids+=($!)
  env "${OUT_ENV[@]}" OUTRIGGER_WORKER_THREADS=$n OUTRIGGER_LISTEN=127.0.0.1:$OUT OUTRIGGER_ADMIN_LISTEN=127.0.0.1:$ADM \
    OUTRIGGER_UPSTREAMS=orders OUTRIGGER_DISCOVERY="static:orders=127.0.0.1:$UP" OUTRIGGER_LOG=warn \
    "${PROXY_ON[@]}" "$BIN" & pids+=($!)
  wait_port "$NGX"; wait_port "$HAP"; wait_port "$OUT"
}

# One load run against port $1 ($2: the scheme, https for the TLS upstream itself; $3: the
# target's name); prints "rps p50_ms p99_ms". Only Outrigger must answer every request well.
measure() {
  if [ "$MODE" = h2 ]; then
    "${LOAD_ON[@]}" h2load -t2 -c"$CONNS" -m10 -D"${DURATION%s}" -d "$work/call.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' -H ':authority: orders' \
      --log-file="$work/h2load.log" "http://127.0.0.1:$1/" > "$work/h2load.out" 2>&1
    h2load_summary "$work/h2load.out" "$work/h2load.log" "$([ "$3" = outrigger ] || echo tolerate)"
    return
  fi
  "${LOAD_ON[@]}" wrk -t2 -c"$CONNS" -d"$DURATION" --latency -H 'Host: orders' "${2:-http}://127.0.0.1:$1/" > "$work/wrk.out" 2>&1
  wrk_summary "$work/wrk.out"
}

load="wrk -t2 -c$CONNS"; [ "$MODE" = h2 ] && load="h2load -t2 -c$CONNS -m10"
echo "proxy benchmark ($MODE): $(nproc) cores, $load -d$DURATION, $ROUNDS alternating rounds, median shown, placement: $PLACEMENT"
echo "machine: $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for n in $THREADS_LIST; do
  start_peers "$n"
  declare -A results=()
  targets=(direct:$UP nginx:$NGX haproxy:$HAP outrigger:$OUT)
  for r in $(seq "$ROUNDS"); do
    for i in 0 1 2 3; do
      t=${targets[$(( (i + r - 1) % 4 ))]}
      name=${t%%:*}; p=${t##*:}
      scheme=http; if [ "$MODE" = tls ] && [ "$name" = direct ]; then scheme=https; fi
      results[$name]+="$(measure "$p" "$scheme" "$name");"
    done
  done
  python3 - "$n" "${results[direct]}" "${results[nginx]}" "${results[haproxy]}" "${results[outrigger]}" <<'PY'
import statistics, sys
n = sys.argv[1]
names = ["direct", "nginx", "haproxy", "outrigger"]
# Each target's rounds, in order, as [rps, p50, p99].
rounds = {name: [list(map(float, r.split())) for r in raw.split(";") if r.strip()]
          for name, raw in zip(names, sys.argv[2:])}
med = {name: [statistics.median(col) for col in zip(*runs)] for name, runs in rounds.items()}
print(f"\n{n} worker(s)/thread(s) per proxy")
print("| target | req/s | p50 (ms) | p99 (ms) |")
print("|---|---|---|---|")
for name in names:
    rps, p50, p99 = med[name]
    print(f"| {name} | {rps:,.0f} | {p50:.3f} | {p99:.3f} |")
o = med["outrigger"]
for peer in ("nginx", "haproxy"):
    p = med[peer]
    print(f"outrigger / {peer}: {o[0]/p[0]:.2f}x req/s, p99 {o[2]:.3f} ms vs {p[2]:.3f} ms")
    # Round by round: each round measures both back to back, so the pair shares the
    # machine's speed of the moment.
    pairs = list(zip(rounds["outrigger"], rounds[peer]))
    rps = sorted(a[0] / b[0] for a, b in pairs)
    p99 = sorted(a[2] / b[2] for a, b in pairs)
    faster = sum(a[0] > b[0] for a, b in pairs)
    lower = sum(a[2] <= b[2] for a, b in pairs)
    print(f"  by round: req/s {rps[0]:.2f}-{rps[-1]:.2f}x (median {statistics.median(rps):.2f}x), "
          f"more req/s in {faster} of {len(pairs)}; p99 {p99[0]:.2f}-{p99[-1]:.2f}x "
          f"(median {statistics.median(p99):.2f}x), p99 no higher in {lower} of {len(pairs)}")
PY
  unset results
  # Stop this round's proxies before the next thread count.
  for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done
  pids=("${pids[0]}")
  sleep 0.3
done
