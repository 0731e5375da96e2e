"""Drives the admin dashboard in a real headless Chromium (Debian `chromium`) over the
DevTools protocol (websocket-client, PyPI): opens the page, clicks a service's "Pin this set"
button for a history version, waits for the page to show the service pinned, and saves a
screenshot. Prints one JSON line: {"pinned": bool, "screenshot": path, "text": page text}.
Usage: python3 dashboard_check.py ADMIN_URL SERVICE VERSION SCREENSHOT.png
"""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

url, service, version, shot = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    sys.exit("chromium is not installed (integration/run-tests.sh installs it)")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
profile = tempfile.mkdtemp(prefix="outrigger-chromium-")
browser = subprocess.Popen(
    [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
     "--disable-dev-shm-usage", f"--remote-debugging-port={port}",
     "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
     "--window-size=1280,1600", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    target = None
    for _ in range(200):
        try:
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1))
            target = next(p for p in pages if p.get("type") == "page")
            break
        except Exception:
            time.sleep(0.1)
    if target is None:
        sys.exit("chromium's DevTools never answered")
    ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=10)
    ids = iter(range(1, 1 << 30))

    def call(method, **params):
        i = next(ids)
        ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    sys.exit(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(expression):
        r = call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")

    def wait_for(expression, what, seconds=10):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if evaluate(expression):
                return True
            time.sleep(0.1)
        sys.exit(f"the page never showed {what}: {evaluate('document.body && document.body.innerText')}")

    call("Page.enable")
    call("Runtime.enable")
    call("Page.navigate", url=url)
    wait_for("document.readyState === 'complete' && !!document.querySelector('h1')", "its heading")
    selector = f'button[data-action="pin"][data-service="{service}"][data-version="{version}"]'
    wait_for(f"!!document.querySelector('{selector}')", f"a pin button for version {version}")
    evaluate(f"document.querySelector('{selector}').click()")
    pinned = wait_for(
        f"(() => {{ const h = document.getElementById('svc-{service}');"
        " return document.readyState === 'complete' && !!h && h.textContent.includes('pinned'); })()",
        "the service pinned")
    shot_data = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
    with open(shot, "wb") as f:
        f.write(base64.b64decode(shot_data))
    print(json.dumps({"pinned": bool(pinned), "screenshot": shot,
                      "text": evaluate("document.body.innerText")}))
finally:
    browser.terminate()
    try:
        browser.wait(timeout=5)
    except subprocess.TimeoutExpired:
        browser.kill()
    shutil.rmtree(profile, ignore_errors=True)
