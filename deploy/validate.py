"""Checks the deployment examples offline, without a cluster, Nomad or Docker:

- Kubernetes manifests against the API schemas of Kubernetes 1.29 (native sidecars),
  strictly (kubernetes-validate, PyPI);
- the Compose file against the Compose Specification's schema (vendored in schemas/);
- the Nomad job parsed as HCL (python-hcl2, PyPI) and its sidecar task's lifecycle;
- the systemd unit with `systemd-analyze verify` (its ExecStart pointed at the binary given);
- every OUTRIGGER_* variable the examples set is one `outrigger --help` lists, and every
  command they run (`wait-ready`) exists;
- the Prometheus alert rules with `promtool check rules` and `promtool test rules`, the
  Grafana dashboard's JSON, and every metric either names is one a running `outrigger`
  exports on /metrics.

Usage: python3 deploy/validate.py path/to/outrigger
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import hcl2
import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.abspath(sys.argv[1])
failures = []


def fail(what, why):
    failures.append(f"{what}: {why}")


def path(*parts):
    return os.path.join(HERE, *parts)


def kubernetes():
    files = sorted(os.path.join(path("kubernetes"), f) for f in os.listdir(path("kubernetes")))
    out = subprocess.run(["kubernetes-validate", "--strict", "-k", "1.29.0", *files],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail("kubernetes", out.stdout + out.stderr)
    deployment = path("kubernetes", "deployment.yaml")
    for doc in yaml.safe_load_all(open(deployment)):
        spec = doc["spec"]["template"]["spec"]
        sidecars = [c for c in spec.get("initContainers", []) if c.get("name") == "outrigger"]
        if not sidecars or sidecars[0].get("restartPolicy") != "Always":
            fail(deployment, "outrigger is not a native sidecar (initContainer, restartPolicy: Always)")
        # A native sidecar is stopped after the app: the app must deregister it first.
        app = [c for c in spec["containers"] if c["name"] == "app"][0]
        if "/deregister" not in json.dumps(app.get("lifecycle", {})):
            fail(deployment, "the app's preStop does not POST /deregister")


def compose():
    schema = json.load(open(path("schemas", "compose-spec.json")))
    doc = yaml.safe_load(open(path("compose", "docker-compose.yml")))
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as e:
        fail("compose", e.message)
    if doc["services"]["app"].get("network_mode") != "service:outrigger":
        fail("compose", "the app does not share the sidecar's network namespace")


def nomad():
    with open(path("nomad", "orders.nomad.hcl")) as f:
        job = hcl2.load(f)
    tasks = [t for j in job["job"] for spec in j.values() for g in spec["group"]
             for gspec in g.values() for t in gspec["task"]]
    # python-hcl2 keeps labels and strings with their quotes.
    outrigger = [spec for t in tasks for name, spec in t.items() if name.strip('"') == "outrigger"]
    if not outrigger:
        fail("nomad", "no outrigger task")
        return
    life = outrigger[0].get("lifecycle", [{}])[0]
    if str(life.get("hook")).strip('"') != "prestart" or life.get("sidecar") is not True:
        fail("nomad", f"the outrigger task is not a prestart sidecar: {life}")


def systemd():
    with tempfile.TemporaryDirectory() as tmp:
        unit = os.path.join(tmp, "outrigger.service")
        text = open(path("systemd", "outrigger.service")).read()
        open(unit, "w").write(text.replace("/usr/local/bin/outrigger", BINARY))
        out = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True, text=True)
        # Only complaints about this unit count (the host's own units may have some).
        mine = [l for l in (out.stdout + out.stderr).splitlines() if "outrigger.service" in l]
        if mine:
            fail("systemd", "\n".join(mine))


def variables_and_commands():
    helptext = subprocess.run([BINARY, "--help"], capture_output=True, text=True).stdout
    known = set(re.findall(r"OUTRIGGER_[A-Z0-9_]+", helptext))
    for root, _, names in os.walk(HERE):
        if "schemas" in root:
            continue
        for name in names:
            if name.endswith((".yaml", ".yml", ".hcl", ".service")):
                f = os.path.join(root, name)
                for var in set(re.findall(r"OUTRIGGER_[A-Z0-9_]+", open(f).read())):
                    if var not in known:
                        fail(f, f"{var} is not a variable `outrigger --help` lists")
                text = open(f).read()
                for endpoint in re.findall(r"127\.0\.0\.1:15000(/[a-z]+)", text):
                    if endpoint not in ("/ready", "/live", "/deregister", "/quitquitquit"):
                        fail(f, f"{endpoint} is not an admin endpoint")
                if "wait-ready" in text:
                    out = subprocess.run([BINARY, "wait-ready", "--help"], capture_output=True)
                    if out.returncode != 0:
                        fail(f, "`outrigger wait-ready` does not exist")


def prometheus_and_grafana():
    rules = path("prometheus", "outrigger-alerts.yml")
    for args in (["check", "rules", rules], ["test", "rules", path("prometheus", "outrigger-alerts.test.yml")]):
        out = subprocess.run(["promtool", *args], capture_output=True, text=True)
        if out.returncode != 0:
            fail("promtool " + " ".join(args[:2]), out.stdout + out.stderr)
    dashboard = json.load(open(path("grafana", "outrigger-dashboard.json")))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    if not exprs:
        fail("grafana", "no panel queries anything")
    # Labelled metrics appear on /metrics with their first label set; those not met yet are
    # still described (with their # HELP text) in src/telemetry.rs.
    telemetry = open(os.path.join(HERE, "..", "src", "telemetry.rs")).read()
    described = set(re.findall(r'describe_\w+!\(\s*"(outrigger_[a-z0-9_]+)"', telemetry))
    exported = exported_metrics() | described
    used = set(re.findall(r"outrigger_[a-z0-9_]+", open(rules).read() + "\n".join(exprs)))
    for name in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in exported and base not in exported:
            fail("metrics", f"{name} is used by an alert or a panel but outrigger does not export it")


def exported_metrics():
    """The metric names a running outrigger lists on /metrics (# HELP lines)."""
    def free():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    admin = free()
    env = dict(os.environ, OUTRIGGER_UPSTREAMS="orders", OUTRIGGER_DISCOVERY="static:orders=127.0.0.1:1",
               OUTRIGGER_LISTEN=f"127.0.0.1:{free()}", OUTRIGGER_ADMIN_LISTEN=f"127.0.0.1:{admin}",
               OUTRIGGER_LOG="warn", OUTRIGGER_SHUTDOWN_DELAY="0s")
    proc = subprocess.Popen([BINARY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                # One request, so that per-request series exist too.
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).read()
                text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=1).read().decode()
                return set(re.findall(r"^# HELP (outrigger_[a-z0-9_]+)", text, re.M))
            except Exception:
                time.sleep(0.1)
        fail("metrics", "outrigger never served /metrics")
        return set()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


for check in (kubernetes, compose, nomad, systemd, variables_and_commands, prometheus_and_grafana):
    check()
if failures:
    print("deployment examples: " + str(len(failures)) + " problem(s)\n" + "\n".join(failures))
    sys.exit(1)
print("deployment examples: kubernetes, compose, nomad, systemd, alert rules and dashboard valid")
