"""Reads an instance Outrigger registered back through py-eureka-client (a third-party client
from PyPI), as a Spring-style client would. Prints one JSON line with the instance's
status, ip, port and metadata, or null.
Usage: python3 eureka_readback.py http://127.0.0.1:PORT/eureka APP ID
"""
import asyncio
import json
import sys

from py_eureka_client import eureka_basic as eb


async def main():
    url, app_name, iid = sys.argv[1], sys.argv[2], sys.argv[3]
    apps = await eb.get_applications(url)
    app = apps.get_application(app_name.upper())
    got = app.get_instance(iid) if app else None
    if got is None:
        print("null")
        return
    print(json.dumps({"status": got.status, "ip": got.ipAddr, "port": got.port.port,
                      "metadata": dict(got.metadata)}))


asyncio.run(main())
