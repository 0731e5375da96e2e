#!/usr/bin/env bash
# Memory: Outrigger's RSS idle (one service) and with 1,000 services x 20 endpoints loaded
# through the file adapter. (The request path during 10,000-endpoint updates: churn.sh.)
#
# Usage: bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
ready() { for _ in $(seq 200); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return 0; sleep 0.05; done; echo "not ready" >&2; exit 1; }

# Idle: one static service.
A=$(port); L=$(port)
OUTRIGGER_LISTEN=127.0.0.1:$L OUTRIGGER_ADMIN_LISTEN=127.0.0.1:$A OUTRIGGER_UPSTREAMS=orders \
  OUTRIGGER_DISCOVERY=static:orders=127.0.0.1:9 OUTRIGGER_LOG=warn "$BIN" & pids+=($!)
ready "$A"; sleep 0.5
idle=$(rss_kb "${pids[-1]}")

# 1,000 services x 20 endpoints through the file adapter.
N=1000; E=20
python3 - "$work/nodes.json" "$N" "$E" <<'PY'
import json, sys
path, n, e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
services = {f"svc{i}": [{"address": f"127.{1 + i // 250}.{i % 250}.{j + 1}:8080", "weight": 1 + j % 3,
                          "zone": f"zone-{j % 3}", "metadata": {"version": "1.0"}} for j in range(e)]
            for i in range(n)}
json.dump({"services": services}, open(path, "w"))
PY
names=$(python3 -c "print(','.join(f'svc{i}' for i in range($N)))")
A2=$(port); L2=$(port)
OUTRIGGER_LISTEN=127.0.0.1:$L2 OUTRIGGER_ADMIN_LISTEN=127.0.0.1:$A2 OUTRIGGER_UPSTREAMS=$names \
  OUTRIGGER_DISCOVERY=file://$work/nodes.json OUTRIGGER_LOG=warn "$BIN" & pids+=($!)
# Freed parse memory goes back to the OS once updates pause for 5 s (src/main.rs).
ready "$A2"; sleep 6
loaded=$(rss_kb "${pids[-1]}")
endpoints=$(curl -s "http://127.0.0.1:$A2/upstreams" | python3 -c "import json,sys; d=json.load(sys.stdin); print(sum(len(s['endpoints']) for s in d['services'].values()))")

echo "memory ($(date -u +%F), $(nproc) cores):"
echo "| state | RSS (MB) | target |"
echo "|---|---|---|"
printf "| idle, 1 service | %.1f | <= 15 |\n" "$(echo "$idle/1024" | bc -l)"
printf "| %d services x %d endpoints (%d loaded) | %.1f | <= 64 |\n" "$N" "$E" "$endpoints" "$(echo "$loaded/1024" | bc -l)"
