# Shared by the benchmark scripts (sourced, not run): tool installation, the binary, a work
# folder whose processes are stopped on exit, ports, and reading wrk's report.

# Installs the Debian packages whose commands are missing. Arguments: command:package pairs.
install_missing() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}; pkg=${pair##*:}
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The path of a command that may live in /usr/sbin, outside a non-root PATH.
sbin() { command -v "$1" || echo "/usr/sbin/$1"; }

# The Outrigger binary: OUTRIGGER_BIN, or a fresh release build.
BIN=${OUTRIGGER_BIN:-target/release/outrigger}
if [ -z "${OUTRIGGER_BIN:-}" ]; then cargo build -q --release --bin outrigger; fi

# A work folder; every pid added to `pids` is stopped on exit.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# Prints "rps p50_ms p99_ms" from a `wrk --latency` report; fails on error responses.
wrk_summary() {
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(r'^\s*' + label + r'%\s+([\d.]+)(us|ms|s)\s*$', text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == 'us' else v * 1000 if unit == 's' else v
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', text).group(1))
errors = re.search(r'Non-2xx or 3xx responses: (\d+)', text)
if errors: sys.exit(f"wrk saw {errors.group(1)} error responses:\n{text}")
print(f"{rps:.0f} {ms('50'):.3f} {ms('99'):.3f}")
PY
}

# Prints "rps p50_ms p99_ms" from an h2load report ($1) and its per-request log ($2: start,
# status, microseconds); fails when a request failed or was answered other than 2xx, unless
# $3 is "tolerate" (a peer's own errors: nginx's grpc_pass answers a few 502s when its h2c
# upstream answers before reading the body), which are then reported on stderr.
h2load_summary() {
  python3 - "$1" "$2" "${3:-}" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r'finished in ([\d.]+)(ms|s), ([\d.]+) req/s', text)
if not m: sys.exit(f"h2load did not finish:\n{text}")
done = re.search(r'requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, (\d+) errored', text)
codes = re.search(r'status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx', text)
if not done or int(done.group(1)) == 0:
    sys.exit(f"h2load did not finish:\n{text}")
bad = sum(int(g) for g in done.groups()[1:] + (codes.groups() if codes else ()))
if bad and sys.argv[3:] != ["tolerate"]:
    sys.exit(f"h2load saw failed requests:\n{text}")
if bad:
    print(f"note: {bad} of {done.group(1)} requests failed or were not 2xx", file=sys.stderr)
times = sorted(int(line.split()[2]) for line in open(sys.argv[2]) if line.strip())
pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1000
print(f"{float(m.group(3)):.0f} {pct(0.50):.3f} {pct(0.99):.3f}")
PY
}

# Writes the HAProxy reverse-proxy config the benchmarks compare against: $1 file, $2 listen
# port, $3 upstream port, $4 threads, $5 more options of the server line (TLS, `proto h2`),
# $6 more options of the bind line (`proto h2`). http-reuse always keeps upstream connections
# alive.
haproxy_proxy_config() {
  cat > "$1" <<CONF
global
  nbthread $4
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$2 ${6:-}
  default_backend b
backend b
  server up 127.0.0.1:$3 ${5:-}
CONF
}

# A CA and a server certificate for the name $2, made with openssl in folder $1: ca.pem,
# server.pem, server.key.
make_test_pki() {
  local dir=$1 name=$2
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=outrigger bench CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$name" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$name" > "$dir/ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/ext" -out "$dir/server.pem" 2>/dev/null
}

# The upstream of start_upstream_nginx over TLS, with the certificate in folder $2.
start_upstream_nginx_tls() {
  local up=$1 pki=$2; shift 2
  mkdir -p "$work/up"
  cat > "$work/up/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/up/nginx.pid; error_log $work/up/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$up ssl; ssl_certificate $pki/server.pem;
    ssl_certificate_key $pki/server.key; location / { return 200 "hello from upstream\n"; } } }
CONF
  "$@" "$(sbin nginx)" -c "$work/up/nginx.conf" -p "$work/up" & pids+=($!)
}

# The upstream of start_upstream_nginx speaking h2c (HTTP/2 with prior knowledge).
start_upstream_nginx_h2c() {
  local up=$1; shift
  mkdir -p "$work/up"
  cat > "$work/up/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/up/nginx.pid; error_log $work/up/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$up http2; location / { return 200 "hello from upstream\n"; } } }
CONF
  "$@" "$(sbin nginx)" -c "$work/up/nginx.conf" -p "$work/up" & pids+=($!)
}

# The upstream every benchmark proxies to: one nginx worker on 127.0.0.1:$1 answering a 20-byte
# body, kept alive. Any further words run it (`taskset -c 1`, say). Its pid joins $pids.
start_upstream_nginx() {
  local up=$1; shift
  mkdir -p "$work/up"
  cat > "$work/up/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/up/nginx.pid; error_log $work/up/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$up; location / { return 200 "hello from upstream\n"; } } }
CONF
  "$@" "$(sbin nginx)" -c "$work/up/nginx.conf" -p "$work/up" & pids+=($!)
}
