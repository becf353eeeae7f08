"""``fleetwise serve-engine`` and ``serve-router``: the emulated engine and the OpenAI-compatible router."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from rich.markup import escape

from fleetwise.cli.app import app, err
from fleetwise.cli.options import float_option


def _serve_extra():
    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import httpx_sse  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as e:
        err.print(f"[bold red]error:[/] {escape(f'the serve commands need the serve extra (pip install fleetwise[serve]): {e}')}")
        sys.exit(2)
    return uvicorn


def _check_listenable(host: str, port: int) -> None:
    """Refuses (ConfigError, exit 2) a --host/--port the server could not listen on: a port in use,
    an address not on this machine, a host name that does not resolve. uvicorn would report it and
    exit 3; the bind is tried here first, as uvicorn does it (SO_REUSEADDR), and the socket closed."""
    import socket

    from fleetwise.errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}") from None


@app.command("serve-engine")
def serve_engine(
    model: str = typer.Option("llama-3-8b", "--model", help="Model to emulate (see `fleetwise catalog`)."),
    gpu: str = typer.Option("h100-sxm", "--gpu", help="GPU to emulate (see `fleetwise catalog`)."),
    tp: int = typer.Option(1, "--tp", min=1, max=4096, help="Tensor-parallel degree."),
    role: str = typer.Option("mixed", "--role", help="mixed, prefill or decode (disaggregation)."),
    speedup: float = float_option(1.0, "--speedup", min=1e-3, max=1e6, help="Run this many times faster than real time (0.001 to 1e6)."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", min=1, max=10**6, help="Most sequences per iteration."),
    max_num_batched_tokens: Optional[int] = typer.Option(None, "--max-num-batched-tokens", min=1, max=2**31 - 1, help="Most tokens per iteration (default max(context, 2048))."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="Model name in the API (default --model)."),
    engine_profile: str = typer.Option("vllm", "--engine", help="Engine profile whose latencies to emulate: vllm, fleetwise-torch or a profile file (docs/engines.md)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
) -> None:
    """Serve the OpenAI API and vLLM's /metrics with latencies from fleetwise's cost model, in real time."""
    uvicorn = _serve_extra()
    _check_listenable(host, port)
    from fleetwise.serve.emulator import EmulatedEngine
    from fleetwise.serve.engine_app import create_engine_app

    sched = {"kind": "vllm", "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens}
    engine = EmulatedEngine(model, gpu, tp=tp, role=role, speedup=speedup, scheduler=sched, served_model_name=served_model_name, engine=engine_profile)
    err.print(f"emulating {model} on {gpu} x{tp} with the {engine_profile} engine profile ({role}, {engine.num_blocks} KV blocks, speedup {speedup:g}) at http://{host}:{port}")
    uvicorn.run(create_engine_app(engine), host=host, port=port, log_level="warning")


@app.command("serve-router")
def serve_router(
    endpoint: List[str] = typer.Option(..., "--endpoint", help="Engine URL[,ROLE] (ROLE mixed, prefill or decode). Repeatable."),
    policy: str = typer.Option("round-robin", "--policy", help="Router policy: a registered name (round-robin, least-outstanding-tokens, cache-aware, disaggregated) or module:attr."),
    param: List[str] = typer.Option([], "--param", help="Policy parameter KEY=VALUE (VALUE read as YAML). Repeatable."),
    scrape_interval: float = float_option(1.0, "--scrape-interval", min=0, help="Seconds between /metrics scrapes of the engines (0: never)."),
    block_chars: int = typer.Option(64, "--block-chars", min=1, help="Prompt characters per block in the prefix index."),
    connect_timeout: float = float_option(5.0, "--connect-timeout", help="Seconds to connect to an engine; a request that cannot connect is retried on another."),
    read_timeout: float = float_option(300.0, "--read-timeout", help="Seconds an engine may send nothing (the whole answer when not streamed) before the client gets a 504."),
    health_interval: float = float_option(1.0, "--health-interval", help="Seconds between GET /health probes of every engine; an ejected engine that passes one is re-admitted (0: never probe)."),
    health_timeout: float = float_option(5.0, "--health-timeout", help="Seconds a health probe or /metrics scrape may take before it counts as failed."),
    eject_after: int = typer.Option(1, "--eject-after", help="Failed checks in a row (connects, read timeouts, probes, scrapes) that eject an engine."),
    retries: int = typer.Option(2, "--retries", help="Times a request whose connection failed is routed again to another engine."),
    policy_timeout: float = float_option(5.0, "--policy-timeout", min=0.001, max=3600.0, help="Most seconds one route() call may take; a longer one fails its request (500) and leaves the router serving."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port", min=1, max=65535),
) -> None:
    """Serve an OpenAI-compatible router in front of ENDPOINTs, routing with a fleetwise Router policy.

    Engines that fail checks are ejected (the policy no longer sees them) until a health probe
    passes again; see docs/serving.md."""
    uvicorn = _serve_extra()
    from fleetwise.config.yaml_input import parse_yaml
    from fleetwise.errors import ConfigError, PolicyError
    from fleetwise.policy import create
    from fleetwise.serve.failover import FailoverSettings
    from fleetwise.serve.router_app import RouterState, create_router_app, parse_endpoint

    params = {}
    for kv in param:
        k, sep, v = kv.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--param {kv!r}: expected KEY=VALUE")
        params[k.strip()] = parse_yaml(v, f"--param {k.strip()}")
    failover = FailoverSettings(connect_timeout=connect_timeout, read_timeout=read_timeout, health_interval=health_interval, health_timeout=health_timeout,
                                eject_after=eject_after, retries=retries)
    endpoints = [parse_endpoint(e) for e in endpoint]
    try:
        router = create("router", policy, **params)
    except PolicyError as e:  # a parameter the policy refused: say which --param
        if not isinstance(e.__cause__, ConfigError):
            raise
        key = getattr(e.__cause__, "param", None)
        raise ConfigError(f"{f'--param {key}' if key else '--param'} (--policy {policy}): {e.__cause__}") from None
    _check_listenable(host, port)
    state = RouterState(endpoints, router, block_chars=block_chars, scrape_interval=scrape_interval, failover=failover, policy_timeout=policy_timeout)
    err.print(f"routing with {policy} over {', '.join(f'{e.name} ({e.role})' for e in state.endpoints)} at http://{host}:{port}")
    uvicorn.run(create_router_app(state), host=host, port=port, log_level="warning")
