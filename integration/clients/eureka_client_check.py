"""Talks to the Eureka emulator with py-eureka-client, a third-party client from PyPI.

It registers an instance, heartbeats it, reads the registry as XML (the client's format, and
real Eureka's default), reads deltas, overrides the status, and deregisters; a heartbeat for an
unknown instance must get 404 so clients know to re-register.
Usage: python3 eureka_client_check.py http://127.0.0.1:PORT/eureka
"""
import asyncio
import sys
import time
from urllib.error import HTTPError

from py_eureka_client import eureka_basic as eb

URL = sys.argv[1]


async def main():
    instance = eb.Instance(
        instanceId="py-1", app="PYORDERS", ipAddr="127.0.0.1", hostName="127.0.0.1",
        port=eb.PortWrapper(9001, True), status="UP", metadata={"weight": "3"},
        vipAddress="pyorders",
    )
    await eb.register(URL, instance)
    apps = await eb.get_applications(URL)
    app = apps.get_application("PYORDERS")
    assert [i.instanceId for i in app.up_instances] == ["py-1"], app.instances
    got = app.get_instance("py-1")
    assert got.port.port == 9001 and got.port.enabled, got.port.__dict__
    assert got.metadata.get("weight") == "3", got.metadata
    assert apps.appsHashcode == "UP_1_", apps.appsHashcode

    await eb.send_heartbeat(URL, "PYORDERS", "py-1", int(time.time() * 1000))
    await eb.status_update(URL, "PYORDERS", "py-1", int(time.time() * 1000), status="OUT_OF_SERVICE")
    delta = await eb.get_delta(URL)
    changed = delta.get_application("PYORDERS").get_instance("py-1")
    assert changed.status == "OUT_OF_SERVICE", changed.status
    assert delta.appsHashcode == "OUT_OF_SERVICE_1_", delta.appsHashcode
    await eb.delete_status_override(URL, "PYORDERS", "py-1", str(int(time.time() * 1000)))
    apps = await eb.get_applications(URL)
    assert apps.get_application("PYORDERS").get_instance("py-1").status == "UP"

    await eb.cancel(URL, "PYORDERS", "py-1")
    apps = await eb.get_applications(URL)
    assert not apps.get_application("PYORDERS").instances, "deregistered"
    try:
        await eb.send_heartbeat(URL, "PYORDERS", "py-1", int(time.time() * 1000))
        raise AssertionError("heartbeat for an unknown instance must fail")
    except HTTPError as e:
        assert e.code == 404, e.code
    print("py-eureka-client: ok")


asyncio.run(main())
