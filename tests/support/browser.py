"""Headless Chromium from the system's packages (Debian: `apt-get install chromium`), driven through its
DevTools protocol over a WebSocket: real clicks, drags, file drops and screenshots, no browser download."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")
START_TIMEOUT = 60


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def require_chromium() -> str:
    """The browser, or a skip (a fail where CI promises one: STUDIO_BROWSER_REQUIRED=1)."""
    found = chromium()
    if found is None:
        why = "no Chromium here: apt-get install chromium (Debian's package) to run the browser tests"
        if os.environ.get("STUDIO_BROWSER_REQUIRED") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return found


class Page:
    """One tab, attached through the browser's connection (flat sessions)."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited); a page error fails the test."""
        reply = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"page error in {expression!r}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, within: float = 60) -> Any:
        """Wait until the expression is truthy: the page checks it on every animation frame and answers
        once it holds, so nothing here sleeps."""
        script = (
            "new Promise((resolve) => { const check = () => { let v; try { v = (" + expression + "); }"
            " catch (e) { v = undefined; } if (v) resolve(v); else requestAnimationFrame(check); };"
            " check(); })"
        )
        try:
            return await asyncio.wait_for(self.evaluate(script), within)
        except TimeoutError:
            now = await self.evaluate("document.getElementById('message')?.textContent")
            raise AssertionError(f"the page never showed {expression!r} (its message: {now!r})") from None

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && location.href.indexOf('token=') < 0")

    async def center(self, selector: str) -> tuple[float, float]:
        rect = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        return rect[0], rect[1]

    async def scroll_into_view(self, selector: str) -> None:
        await self.evaluate(
            f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})"
        )

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre."""
        await self.scroll_into_view(selector)
        x, y = await self.center(selector)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
        """Press, move in steps, release: what a hand on a mouse does."""
        (x0, y0), (x1, y1) = start, end
        await self.send(
            "Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", clickCount=1
        )
        for i in range(1, steps + 1):
            x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
            await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
        await self.send(
            "Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y1, button="left", clickCount=1
        )

    async def drop_files(self, selector: str, files: list[Path]) -> None:
        """Drag files from outside the browser and drop them on an element."""
        await self.scroll_into_view(selector)
        x, y = await self.center(selector)
        data = {"items": [], "files": [str(f) for f in files], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            await self.send("Input.dispatchDragEvent", type=kind, x=x, y=y, data=data)

    async def choose_files(self, selector: str, files: list[Path]) -> None:
        """Pick files in a file input, as its dialog would."""
        document = await self.send("DOM.getDocument")
        node = await self.send("DOM.querySelector", nodeId=document["root"]["nodeId"], selector=selector)
        await self.send("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(f) for f in files])

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    def __init__(self, process: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.process = process
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            waiter = self._waiting.pop(data.get("id", -1), None)
            if waiter is not None and not waiter.done():
                if "error" in data:
                    waiter.set_exception(AssertionError(f"DevTools: {data['error']}"))
                else:
                    waiter.set_result(data.get("result", {}))
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(AssertionError("the browser went away"))

    async def send(self, method: str, params: dict[str, Any], session: str | None = None) -> dict[str, Any]:
        message_id = next(self._ids)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = waiter
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(waiter, 120)

    async def new_page(self, width: int = 1280, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page


@contextlib.asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[Browser]:
    """Chromium, headless, with its own profile folder, closed afterwards."""
    args = [
        require_chromium(),
        "--headless=new",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root (containers, CI)
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    url = None
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while url is None:
                line = await process.stderr.readline()
                if not line:
                    raise AssertionError("Chromium exited before its DevTools endpoint was up")
                if found := LISTENING.search(line):
                    url = found.group(1).decode()
        drain = asyncio.ensure_future(_drain(process.stderr))  # a full pipe would stall the browser
        async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
            chrome = Browser(process, ws)
            try:
                yield chrome
            finally:
                chrome._reader.cancel()
        drain.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
