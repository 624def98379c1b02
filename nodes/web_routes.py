"""HTTP routes the frontend extension (web/guidekit.js) reads: model layers, the step schedule, node costs.

    GET /guidekit/model?folder=checkpoints&name=FILE[&layers=TEXT[&node=NODE_ID]]
                                                            → attention layers, defaults, σ range, and
                                                              what TEXT selects (the nodes' own parser)
    GET /guidekit/schedule?folder=&name=&scheduler=&sampler=&steps=&denoise=&start_percent=&end_percent=
                          [&sigma_start=&sigma_end=]        → σ per step and which steps are active
    GET /guidekit/costs                                     → extra model passes per step of each node,
                                                              model loaders, compare-grid methods

Every failure is a JSON {"error": message} with status 400; nothing here raises into the server. Parameters
are bounded (schedule: 1-1000 steps, 0 < denoise ≤ 1, at most 1000 σ) and the work runs off the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import math
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from . import catalog
from .model_info import LOADERS, default_model_sampling, describe, schedule

_registered = False


# Route work (file headers, a meta-device model, σ schedules) runs on these threads, never on the server's
# event loop: a slow request must not hold up the queue, the websocket or any other route. Two threads bound
# what a flood of requests can take from the sampler.
_WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="guidekit-route")
TIMEOUT_S = 10.0


def _error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _answer(work) -> web.Response:
    """Run `work()` off the event loop; its dict as JSON, or its error as a JSON 400 (never an exception)."""
    try:
        loop = asyncio.get_running_loop()
        return web.json_response(await asyncio.wait_for(loop.run_in_executor(_WORKERS, work), TIMEOUT_S))
    except asyncio.TimeoutError:
        return _error(f"GuideKit: the request took longer than {TIMEOUT_S:g} s and was abandoned")
    except Exception as err:                          # a bad file or parameter must not take the server down
        return _error(str(err))


def _number(query, name: str, default: float, kind=float) -> float:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"GuideKit schedule: parameter '{name}' = {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"GuideKit schedule: parameter '{name}' = {text[:40]!r} is not a finite number")
    return value


async def model_route(request: web.Request) -> web.Response:
    q = request.rel_url.query

    def work() -> dict:
        described = describe(q.get("folder", ""), q.get("name", ""))
        body = described.to_json()
        if "layers" in q:
            body.update(described.selection(q["layers"], q.get("node", "")))
        return body
    return await _answer(work)


async def schedule_route(request: web.Request) -> web.Response:
    q = request.rel_url.query

    def work() -> dict:
        ms = describe(q.get("folder", ""), q["name"]).model_sampling if q.get("name") else default_model_sampling()
        return schedule(ms, q.get("scheduler", "normal"), q.get("sampler", "euler"), int(_number(q, "steps", 20, int)),
                        _number(q, "denoise", 1.0), _number(q, "start_percent", 0.0), _number(q, "end_percent", 1.0),
                        _number(q, "sigma_start", -1.0), _number(q, "sigma_end", -1.0), q.get("node", "GuideKit")[:80])
    return await _answer(work)


async def costs_route(request: web.Request) -> web.Response:
    return web.json_response({"costs": catalog.costs(), "loaders": {k: list(v) for k, v in LOADERS.items()},
                              "methods": catalog.compare_methods()})


def register_routes() -> bool:
    """Add the routes to ComfyUI's server once; False when no server runs (in-process use, tests)."""
    global _registered
    if _registered:
        return True
    try:
        from server import PromptServer
        routes = PromptServer.instance.routes
    except (ImportError, AttributeError):
        return False
    routes.get("/guidekit/model")(model_route)
    routes.get("/guidekit/schedule")(schedule_route)
    routes.get("/guidekit/costs")(costs_route)
    _registered = True
    logging.debug("GuideKit: frontend routes registered")
    return True
