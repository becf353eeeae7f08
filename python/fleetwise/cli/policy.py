"""``fleetwise check-policy``: the conformance checker for a user's policy."""

from __future__ import annotations

import json
from typing import List

import typer

from fleetwise.cli.app import app, out
from fleetwise.cli.options import float_option


@app.command("check-policy")
def check_policy(
    kind: str = typer.Argument(..., help="router, scheduler, prefix-cache, expert-cache or decode-choice."),
    name: str = typer.Argument(..., help="A registered name or package.module:attr."),
    param: List[str] = typer.Option([], "--param", "-p", help="Constructor argument key=value (value parsed as JSON when it can be)."),
    timeout: float = float_option(10.0, "--timeout", min=0.001, max=86400.0, help="Most seconds one policy call may take (up to a day); a longer call fails the check."),
) -> None:
    """Check a policy against its interface (fleetwise.policy.conformance); exit 1 when it fails, 2 when it cannot be built."""
    from fleetwise.errors import ConfigError, PolicyError
    from fleetwise.policy import conformance, registry
    from fleetwise.policy.watchdog import PolicyTimeout, deadline

    params = {}
    for p in param:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {p!r}: expected key=value")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    def within(what: str, fn):
        try:
            with deadline(timeout, what):
                return fn()
        except PolicyTimeout:
            raise PolicyError(f"{kind} policy {name!r}: {what} did not return within {timeout:g} s") from None

    def create():
        return within("importing or creating it", lambda: registry.create(kind, name, **params))

    if kind == "router":
        report = conformance.check_router(create(), timeout=timeout)
    elif kind == "scheduler":
        report = conformance.check_scheduler(create(), timeout=timeout)
    elif kind == "prefix-cache":
        report = conformance.check_prefix_cache(create(), timeout=timeout)
    elif kind == "expert-cache":
        factory = within("importing it", lambda: registry.resolve(kind, name))
        report = conformance.check_expert_cache(lambda layers, experts, capacity: registry.build(kind, name, factory, layers, experts, capacity, **params), timeout=timeout)
    elif kind == "decode-choice":
        report = conformance.check_decode_choice(create(), timeout=timeout)
    else:
        raise ConfigError(f"check-policy: unknown kind {kind!r}; allowed: router, scheduler, prefix-cache, expert-cache, decode-choice")
    report.policy = name
    out.print(str(report), highlight=False, markup=False)
    if not report.passed:
        raise typer.Exit(1)
