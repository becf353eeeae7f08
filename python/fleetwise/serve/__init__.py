"""Serving front ends: an OpenAI-compatible router driven by fleetwise policies
(``fleetwise serve-router``) and an emulated engine whose latencies come from fleetwise's cost
model (``fleetwise serve-engine``). See docs/serving.md.

Needs the ``serve`` extra (fastapi, uvicorn, httpx, httpx-sse, prometheus-client): ``pip install 'fleetwise[serve]'``.
"""

from fleetwise.serve.emulator import EmulatedEngine
from fleetwise.serve.engine_app import create_engine_app
from fleetwise.serve.prefix_index import PrefixIndex
from fleetwise.serve.router_app import Endpoint, RouterState, create_router_app

__all__ = ["EmulatedEngine", "create_engine_app", "PrefixIndex", "Endpoint", "RouterState", "create_router_app"]
