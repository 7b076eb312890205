"""A real browser: MQTT.js (the npm ``mqtt`` package's browser bundle) in headless Debian
Chromium driven by Playwright, on a page served by a local HTTP server, connecting over
``ws://``; it subscribes and receives what paho publishes over TCP.

Needs ``/usr/bin/chromium`` (Debian's ``chromium``), the ``playwright`` Python package (the
``dev`` extra; its own browser downloads are never used) and ``tests/browser/node_modules``
(``npm ci --prefix tests/browser``); ``scripts/services`` installs all three. Under
``CI=true`` a missing piece fails the test, elsewhere it skips.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.paho import connect
from tidemq.broker.hooks import ClientInfo, ConnectedEvent, HookPoint

from .conftest import Start

CHROMIUM = "/usr/bin/chromium"
BUNDLE = (
    Path(__file__).resolve().parents[1]
    / "browser"
    / "node_modules"
    / "mqtt"
    / "dist"
    / "mqtt.min.js"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 15_000

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><script src="mqtt.min.js"></script></head>
<body><script>
  window.received = [];
  window.errors = [];
  const params = new URLSearchParams(location.search);
  const client = mqtt.connect(params.get("ws"), {
    clientId: "browser-1", protocolVersion: Number(params.get("v")), reconnectPeriod: 0,
  });
  client.on("error", (e) => window.errors.push(String(e)));
  client.on("connect", () => {
    client.subscribe("browser/#", { qos: 1 }, (err, granted) => {
      if (err) { window.errors.push(String(err)); return; }
      window.granted = granted.map((g) => g.qos);
    });
  });
  client.on("message", (topic, payload, packet) => {
    window.received.push([topic, payload.toString(), packet.qos]);
  });
</script></body></html>
"""


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not installed (Debian package chromium)"
    if not BUNDLE.exists():
        return "MQTT.js not installed (npm ci --prefix tests/browser)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser_ready() -> None:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"browser test cannot run under CI: {missing} (scripts/services installs it)"
            )
        pytest.skip(missing)


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server for the page and the bundle; yields its origin."""
    (tmp_path / "index.html").write_text(PAGE)
    shutil.copy(BUNDLE, tmp_path / "mqtt.min.js")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.usefixtures("browser_ready")
@pytest.mark.parametrize("version", [4, 5])
async def test_mqtt_js_in_chromium_over_websocket(
    start: Start, web_root: str, version: int
) -> None:
    from playwright.async_api import async_playwright

    # The broker only lets pages from our web server in: the browser's Origin is checked too.
    urls = [f"ws://127.0.0.1:0/mqtt?allowed_origins={web_root}", "tcp://127.0.0.1:0"]
    async with start(urls) as running:
        seen: list[ClientInfo] = []

        def on_connected(event: ConnectedEvent) -> None:
            seen.append(event.client)

        running.hooks.register(HookPoint.CLIENT_CONNECTED, on_connected)
        ws_url = f"ws://127.0.0.1:{running.port('ws')}/mqtt"
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{web_root}/index.html?ws={ws_url}&v={version}")
                await page.wait_for_function(
                    "window.granted !== undefined || window.errors.length > 0", timeout=WAIT_MS
                )
                assert await page.evaluate("window.errors") == []
                assert await page.evaluate("window.granted") == [1]
                assert [(c.client_id, c.listener, c.protocol_version) for c in seen] == [
                    ("browser-1", "ws:0", version)
                ]
                pub = await connect(running.port("tcp"), "paho-pub")
                await pub.publish("browser/hello", "from paho over tcp", qos=1)
                await pub.disconnect()
                await page.wait_for_function("window.received.length > 0", timeout=WAIT_MS)
                assert await page.evaluate("window.received") == [
                    ["browser/hello", "from paho over tcp", 1]
                ]
            finally:
                await browser.close()
