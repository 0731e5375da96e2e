#!/usr/bin/env bash
# Installs whatever the tests need and is missing, then runs every test.
# This is README's "command 2"; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# The real DNS server the DNS discovery tests run against.
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null || need_apt+=(dnsmasq-base)
# The load generator and the peers of the benchmarks' smoke rounds.
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need_apt+=(nginx-light)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || need_apt+=(haproxy)
# The browser the dashboard test drives (headless, over the DevTools protocol).
command -v chromium >/dev/null || need_apt+=(chromium)
# promtool, which checks and unit-tests the alert rules in deploy/prometheus.
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# Third-party registry clients that prove the emulators speak the real protocols.
py_missing=()
python3 -c 'import consul' 2>/dev/null || py_missing+=('py-consul>=1.8,<2')
python3 -c 'import py_eureka_client' 2>/dev/null || py_missing+=('py-eureka-client>=0.13,<0.14')
# The outside gRPC client (and node) of the HTTP/2 tests.
python3 -c 'import grpc' 2>/dev/null || py_missing+=('grpcio>=1.60,<2')
# The dashboard test's DevTools client.
python3 -c 'import websocket' 2>/dev/null || py_missing+=('websocket-client>=1.6,<2')
# Offline checks of the deployment examples (deploy/validate.py).
command -v kubernetes-validate >/dev/null || py_missing+=('kubernetes-validate>=1.30,<2')
python3 -c 'import hcl2' 2>/dev/null || py_missing+=('python-hcl2>=8,<9')
python3 -c 'import jsonschema, yaml' 2>/dev/null || py_missing+=('jsonschema>=4,<5' 'PyYAML>=6,<7')
if [ ${#py_missing[@]} -gt 0 ]; then
  echo "== installing from PyPI: ${py_missing[*]}"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${py_missing[@]}"
fi

# The real Nacos server (r-nacos) for the Nacos tests: about 8 minutes to build on 2 cores,
# so it is installed once and reused.
if ! command -v rnacos >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/rnacos" ]; then
  echo "== installing r-nacos (cargo install rnacos --locked; about 8 minutes)"
  cargo install rnacos --locked --quiet
fi

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== unit and end-to-end tests"
cargo test --workspace --all-targets

echo "== quickstart example (README command 1), one round"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OUTRIGGER_LISTEN="127.0.0.1:$(port)" OUTRIGGER_ADMIN_LISTEN="127.0.0.1:$(port)" \
  OUTRIGGER_LOG=warn cargo run -q --example quickstart -- --once
echo "== deployment examples, checked offline"
cargo build -q --bin outrigger
python3 deploy/validate.py target/debug/outrigger
echo "== benchmark drivers, smoke round (numbers are not checked here; see bench/README.md)"
cargo build -q --bin outrigger
cargo run -q -p outrigger-bench --bin convergence -- --outrigger target/debug/outrigger --changes 3 --gap-ms 0 --adapters consul,file
OUTRIGGER_BIN=target/debug/outrigger bash bench/proxy.sh --smoke
MODE=tls OUTRIGGER_BIN=target/debug/outrigger bash bench/proxy.sh --smoke
MODE=h2 OUTRIGGER_BIN=target/debug/outrigger bash bench/proxy.sh --smoke
OUTRIGGER_BIN=target/debug/outrigger POLICY=round_robin bash bench/churn.sh --smoke
echo "== all tests passed"
