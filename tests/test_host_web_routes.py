"""Tier 2: the frontend routes under hostile input, served by aiohttp in-process (as ComfyUI serves them).

Every answer is JSON, bad input is a 400 naming the parameter, and route work runs off the event loop:
while a route computes, the server keeps answering other requests.
"""
from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def routes(comfy):
    from guidekit.nodes import web_routes
    return web_routes


def serve(routes, requests, extra=None):
    """Start an app with the pack's routes (+ `extra` ones), run `requests(client)` and return its result."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def main():
        app = web.Application()
        app.router.add_get("/guidekit/model", routes.model_route)
        app.router.add_get("/guidekit/schedule", routes.schedule_route)
        app.router.add_get("/guidekit/costs", routes.costs_route)
        for path, handler in (extra or {}).items():
            app.router.add_get(path, handler)
        async with TestClient(TestServer(app)) as client:
            return await requests(client)
    return asyncio.run(main())


HOSTILE_SCHEDULES = [
    ("steps=100&denoise=0.0001", "steps / denoise = 1000000"),     # the freeze the fuzz pass found (44 s)
    ("steps=1000&denoise=0.5", "steps / denoise = 2000"),
    ("steps=10000", "steps must be between 1 and 1000"),
    ("steps=0", "steps must be between 1 and 1000"),
    ("denoise=-1", "denoise must be above 0"),
    ("denoise=0", "denoise must be above 0"),
    ("denoise=nan", "'denoise' = 'nan' is not a finite number"),
    ("steps=ten", "'steps' = 'ten' is not a number"),
    ("start_percent=inf", "'start_percent' = 'inf' is not a finite number"),
    ("start_percent=7", "start_percent and end_percent must be between 0 and 1"),
    ("scheduler=" + "x" * 5000, "unknown scheduler"),
    ("sampler=%3Cimg%20src%3Dx%3E", "unknown sampler"),
    ("folder=checkpoints&name=..%2F..%2F..%2Fetc%2Fpasswd", "is not a file of the 'checkpoints' model folder"),
]


@pytest.mark.parametrize("query,message", HOSTILE_SCHEDULES)
def test_hostile_schedule_requests_are_quick_named_400s(routes, query, message):
    async def requests(client):
        t0 = time.monotonic()
        r = await client.get(f"/guidekit/schedule?{query}")
        return r.status, await r.json(), time.monotonic() - t0
    status, body, seconds = serve(routes, requests)
    assert status == 400 and message in body["error"], body
    assert seconds < 1.0, f"{query}: answered after {seconds:.2f} s"


def test_the_largest_allowed_schedule_answers_within_a_second(routes):
    async def requests(client):
        t0 = time.monotonic()
        r = await client.get("/guidekit/schedule?steps=1000&scheduler=normal&sampler=dpm_2")
        return r.status, await r.json(), time.monotonic() - t0
    status, body, seconds = serve(routes, requests)
    assert status == 200 and len(body["sigmas"]) == 1001
    assert seconds < 1.0, f"answered after {seconds:.2f} s"


def test_the_server_answers_other_requests_while_a_route_works(routes, monkeypatch):
    """A schedule that takes 1.5 s (slowed on purpose) must not hold up a request sent while it runs."""
    real = routes.schedule

    def slow_schedule(*args, **kwargs):
        time.sleep(1.5)
        return real(*args, **kwargs)
    monkeypatch.setattr(routes, "schedule", slow_schedule)

    async def ping(request):
        from aiohttp import web
        return web.json_response({"ok": True})

    async def requests(client):
        t0 = time.monotonic()
        slow = asyncio.create_task(client.get("/guidekit/schedule?steps=10"))
        await asyncio.sleep(0.2)                       # the schedule is being computed now
        r = await client.get("/ping")
        ping_done = time.monotonic() - t0
        slow_response = await slow
        return ping_done, r.status, slow_response.status, time.monotonic() - t0
    ping_done, ping_status, slow_status, total = serve(routes, requests, {"/ping": ping})
    assert ping_status == 200 and slow_status == 200
    assert total >= 1.5, "the slowed route did not run: the test would be vacuous"
    assert ping_done < 1.0, f"the other request waited {ping_done:.2f} s for the route"


@pytest.mark.parametrize("query,message", [
    ("folder=checkpoints&name=%2Fetc%2Fpasswd", "is not a file of the 'checkpoints' model folder"),
    ("folder=guidekit_mnist&name=..%2F..%2Fnodes%2F__init__.py", "is not one of the pack's files"),
    ("folder=loras&name=x.safetensors", "is not one GuideKit describes"),
    ("folder=checkpoints", "is not a file of the 'checkpoints' model folder"),
])
def test_model_route_refuses_paths_outside_the_model_folders(routes, query, message):
    async def requests(client):
        r = await client.get(f"/guidekit/model?{query}")
        return r.status, await r.json()
    status, body = serve(routes, requests)
    assert status == 400 and message in body["error"], body


def test_model_route_describes_the_mnist_demo_weights(routes):
    """The pack's own loader: JSON with the layers and the σ range, and a schedule on its model."""
    async def requests(client):
        a = await client.get("/guidekit/model?folder=guidekit_mnist&name=mnist-main.safetensors&layers=middle")
        b = await client.get("/guidekit/schedule?folder=guidekit_mnist&name=mnist-main.safetensors&steps=8")
        return a.status, await a.json(), b.status, await b.json()
    status, body, status2, schedule = serve(routes, requests)
    assert status == 200 and "middle.0.0" in body["layers"] and body["selected"] == ["middle.0.0"]
    assert body["sigma_max"] > body["sigma_min"] > 0
    assert status2 == 200 and len(schedule["sigmas"]) == 9 and all(schedule["active"])
