"""Reads an instance Outrigger registered back through py-consul (a third-party client from
PyPI), as another Consul user would: the agent's service and its check in the health view.
Prints one JSON line: {"service": ..., "status": ...}.
Usage: python3 consul_readback.py HOST PORT SERVICE ID
"""
import json
import sys

import consul

host, port, name, sid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = consul.Consul(host=host, port=port)
services = c.agent.services()
_, nodes = c.health.service(name)
checks = [ch for n in nodes if n["Service"]["ID"] == sid for ch in n["Checks"]
          if ch["CheckID"] == "service:" + sid]
print(json.dumps({"service": services.get(sid),
                  "status": checks[0]["Status"] if checks else None}))
