"""Mixture-of-experts helpers: recorded routing traces and the simulator's expert cache policies."""

from fleetwise.moe.cache import cache_hits
from fleetwise.moe.routing_trace import RoutingTrace, load_routing_trace, write_routing_trace

__all__ = ["RoutingTrace", "cache_hits", "load_routing_trace", "write_routing_trace"]
