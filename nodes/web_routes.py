"""HTTP routes the frontend extension (web/guidekit.js) reads: model layers, the step schedule, node costs.

    GET /guidekit/model?folder=checkpoints&name=FILE[&layers=TEXT]
                                                            → attention layers, defaults, σ range, and
                                                              what TEXT selects (the nodes' own parser)
    GET /guidekit/schedule?folder=&name=&scheduler=&sampler=&steps=&denoise=&start_percent=&end_percent=
                          [&sigma_start=&sigma_end=]        → σ per step and which steps are active
    GET /guidekit/costs                                     → extra model passes per step of each node

Every failure is a JSON {"error": message} with status 400; nothing here raises into the server.
"""
from __future__ import annotations

import logging

from aiohttp import web

from .costs import COSTS
from .model_info import LOADERS, default_model_sampling, describe, schedule

_registered = False


def _error(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def model_route(request: web.Request) -> web.Response:
    q = request.rel_url.query
    try:
        described = describe(q.get("folder", ""), q.get("name", ""))
        body = described.to_json()
        if "layers" in q:
            body.update(described.selection(q["layers"]))
        return web.json_response(body)
    except Exception as err:                          # a bad file must not take the server down
        return _error(str(err))


async def schedule_route(request: web.Request) -> web.Response:
    q = request.rel_url.query
    try:
        ms = describe(q["folder"], q["name"]).model_sampling if q.get("name") else default_model_sampling()
        return web.json_response(schedule(
            ms, q.get("scheduler", "normal"), q.get("sampler", "euler"), int(q.get("steps", 20)),
            float(q.get("denoise", 1.0)), float(q.get("start_percent", 0.0)), float(q.get("end_percent", 1.0)),
            float(q.get("sigma_start", -1.0)), float(q.get("sigma_end", -1.0)), q.get("node", "GuideKit")))
    except Exception as err:
        return _error(str(err))


async def costs_route(request: web.Request) -> web.Response:
    return web.json_response({"costs": COSTS, "loaders": {k: list(v) for k, v in LOADERS.items()}})


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
