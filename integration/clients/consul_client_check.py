"""Talks to the Consul emulator with py-consul, a third-party client from PyPI.

If a client written against the real Consul works unchanged here, the emulator speaks the real
protocol: agent registration with TTL checks, check updates, health queries with `passing`,
blocking queries that hang until a change or the wait, and the catalog listing.
Usage: python3 consul_client_check.py HOST PORT
"""
import sys
import threading
import time

import consul

host, port = sys.argv[1], int(sys.argv[2])
c = consul.Consul(host=host, port=port)

c.agent.service.register(
    "pyorders", service_id="py-1", address="127.0.0.1", port=9001, tags=["v1"],
    meta={"zone": "a"}, weights={"Passing": 7, "Warning": 2}, check=consul.Check.ttl("30s"),
)
idx, nodes = c.health.service("pyorders")
assert len(nodes) == 1, nodes
assert nodes[0]["Checks"][-1]["Status"] == "critical", "a TTL check starts critical"
assert nodes[0]["Service"]["Weights"] == {"Passing": 7, "Warning": 2}, nodes[0]["Service"]
assert nodes[0]["Service"]["Meta"] == {"zone": "a"}

_, nodes = c.health.service("pyorders", passing=True)
assert nodes == [], nodes

c.agent.check.ttl_pass("service:py-1")
idx2, nodes = c.health.service("pyorders", passing=True)
assert len(nodes) == 1 and nodes[0]["Service"]["Port"] == 9001, nodes
assert idx2 > idx, (idx, idx2)


def register_later():
    time.sleep(0.5)
    c.agent.service.register("pyorders", service_id="py-2", address="127.0.0.1", port=9002)


threading.Thread(target=register_later).start()
start = time.time()
idx3, nodes = c.health.service("pyorders", index=idx2, wait="10s")
elapsed = time.time() - start
assert 0.4 < elapsed < 5, f"blocking query returned after {elapsed:.2f}s"
assert idx3 > idx2 and len(nodes) == 2, (idx3, nodes)

start = time.time()
idx4, _ = c.health.service("pyorders", index=idx3, wait="1s")
elapsed = time.time() - start
assert idx4 == idx3, (idx3, idx4)
assert 0.9 < elapsed < 2.5, f"unchanged blocking query returned after {elapsed:.2f}s"

c.agent.service.deregister("py-1")
_, nodes = c.health.service("pyorders")
assert [n["Service"]["ID"] for n in nodes] == ["py-2"], nodes
_, services = c.catalog.services()
assert "pyorders" in services, services
c.agent.service.deregister("py-2")
print("py-consul: ok")
