#!/usr/bin/env bash
# CPU cost per proxied request: instructions and cycles, user and kernel, of nginx, HAProxy and
# Outrigger under the same wrk load (perf stat on each proxy's process).
#
# Requests per second move with whatever else the (shared, virtual) machine is doing;
# instructions per request barely move, so this is how a change to the request path is judged
# before proxy.sh confirms it in requests per second. One worker/thread per proxy.
#
# Usage: bench/cost.sh [--smoke]   (--smoke: 1-second runs)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=5
if [ "${1:-}" = "--smoke" ]; then DURATION=1; fi

. bench/common.sh
install_missing wrk:wrk nginx:nginx-light haproxy:haproxy perf:linux-perf
NGINX=$(sbin nginx)
HAPROXY=$(sbin haproxy)

UP=$(port); NGX=$(port); HAP=$(port); OUT=$(port); ADM=$(port)
mkdir -p "$work/ngx"
start_upstream_nginx "$UP"
# The proxy nginx runs in the foreground with its one worker, so perf can follow the worker.
cat > "$work/ngx/nginx.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $work/ngx/nginx.pid; error_log $work/ngx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NGX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
"$NGINX" -c "$work/ngx/nginx.conf" -p "$work/ngx" & ngx_pid=$!; pids+=("$ngx_pid")
haproxy_proxy_config "$work/haproxy.cfg" "$HAP" "$UP" 1
"$HAPROXY" -f "$work/haproxy.cfg" -db & hap_pid=$!; pids+=("$hap_pid")
OUTRIGGER_WORKER_THREADS=1 OUTRIGGER_LISTEN=127.0.0.1:$OUT OUTRIGGER_ADMIN_LISTEN=127.0.0.1:$ADM \
  OUTRIGGER_UPSTREAMS=orders OUTRIGGER_DISCOVERY="static:orders=127.0.0.1:$UP" OUTRIGGER_LOG=warn \
  "$BIN" & out_pid=$!; pids+=("$out_pid")
wait_port "$UP"; wait_port "$NGX"; wait_port "$HAP"; wait_port "$OUT"

echo "CPU cost per request: wrk -t2 -c64 -d${DURATION}s, perf stat on each proxy, one worker/thread"
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "| proxy | req/s | user instructions | kernel instructions | user cycles | kernel cycles | page faults |"
echo "|---|---|---|---|---|---|---|"
for t in nginx:$NGX:$ngx_pid haproxy:$HAP:$hap_pid outrigger:$OUT:$out_pid; do
  IFS=: read -r name p pid <<<"$t"
  perf stat -x, -e instructions:u,instructions:k,cycles:u,cycles:k,page-faults -p "$pid" \
    -o "$work/perf.$name" -- sleep "$DURATION" >/dev/null 2>&1 &
  perf_pid=$!
  wrk -t2 -c64 -d"${DURATION}s" -H 'Host: orders' "http://127.0.0.1:$p/" > "$work/wrk.$name"
  wait "$perf_pid" || true
  python3 - "$name" "$work/wrk.$name" "$work/perf.$name" "$DURATION" <<'PY'
import re, sys
name, wrk, perf, duration = sys.argv[1], open(sys.argv[2]).read(), open(sys.argv[3]).read(), float(sys.argv[4])
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', wrk).group(1))
n = rps * duration
counts = {}
for line in perf.splitlines():
    f = line.split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        counts[f[2]] = float(f[0])
if not counts:
    sys.exit(f"perf counted nothing for {name} (is perf_event_paranoid too strict?):\n{perf}")
per = lambda k: f"{counts[k] / n:,.0f}" if k in counts else "n/a"
pf = f"{counts['page-faults'] / n:.3f}" if 'page-faults' in counts else "n/a"
print(f"| {name} | {rps:,.0f} | {per('instructions:u')} | {per('instructions:k')} | {per('cycles:u')} | {per('cycles:k')} | {pf} |")
PY
done
