"""``fleetwise serve-router``'s configuration: failover settings, router policy parameters and
endpoint roles are checked before it serves (exit 2 naming the option), and the metrics it scrapes
parse whatever label values engines send. Nothing here starts a server that serves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fleetwise.serve import prom

GUARD = 60.0
"""Hang guard (seconds) for every command."""


@pytest.mark.parametrize("args, message", [
    (["--read-timeout", "0"], "read-timeout must be a positive number of seconds"),
    (["--connect-timeout", "-1"], "connect-timeout must be a positive number of seconds"),
    (["--eject-after", "0"], "eject-after must be at least 1"),
    (["--retries", "-1"], "retries must be at least 0"),
    (["--health-interval", "-2"], "health-interval must be 0 (never) or a positive"),
])
def test_cli_rejects_bad_failover_settings(args, message):
    r = subprocess.run([sys.executable, "-m", "fleetwise", "serve-router", "--endpoint", "http://127.0.0.1:1", *args], capture_output=True, text=True, timeout=GUARD)
    assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--policy", "cache-aware", "--param", "prefix_weight=abc"], "--param prefix_weight (--policy cache-aware): router parameter prefix_weight must be a finite number >= 0, got 'abc'"),
    (["--policy", "cache-aware", "--param", "prefix_weight=.nan"], "--param prefix_weight (--policy cache-aware): router parameter prefix_weight must be a finite number >= 0, got nan"),
    (["--policy", "cache-aware", "--param", "load_weight=-1"], "load_weight must be a finite number >= 0"),
    (["--policy", "cache-aware", "--param", "prefix_weight=[1"], "--param prefix_weight, line 1: invalid YAML"),
    (["--policy", "disaggregated", "--endpoint", "http://127.0.0.1:2,prefill", "--endpoint", "http://127.0.0.1:3,decode", "--param", "pd_threshold=1.5"],
     "--param pd_threshold (--policy disaggregated): router parameter pd_threshold must be a whole number >= 0, got 1.5"),
    (["--policy", "disaggregated", "--endpoint", "http://127.0.0.1:2,prefill", "--endpoint", "http://127.0.0.1:3,decode", "--param", "decode_may_prefill=maybe"],
     "decode_may_prefill must be true or false"),
    (["--policy", "disaggregated", "--endpoint", "http://127.0.0.1:2"], "needs at least one prefill and one decode endpoint (--endpoint URL,prefill and --endpoint URL,decode); got roles mixed, mixed"),
    (["--policy", "disaggregated", "--endpoint", "http://127.0.0.1:2,decode"], "needs at least one prefill and one decode endpoint"),
])
def test_cli_rejects_bad_policy_parameters_and_endpoint_roles(args, message):
    r = subprocess.run([sys.executable, "-m", "fleetwise", "serve-router", "--endpoint", "http://127.0.0.1:1", *args], capture_output=True, text=True, timeout=GUARD)
    assert r.returncode == 2 and "error: ConfigError: " in r.stderr and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("url, message", [
    ("http://[::1", "endpoint 'http://[::1' is not an http(s) URL: Invalid IPv6 URL"),
    ("http://:8000", "endpoint 'http://:8000' names no valid host"),
    ("http://a b:8000", "names no valid host"),
])
def test_cli_rejects_endpoint_urls_it_cannot_parse(url, message):
    r = subprocess.run([sys.executable, "-m", "fleetwise", "serve-router", "--endpoint", url], capture_output=True, text=True, timeout=GUARD)
    assert r.returncode == 2 and "error: ConfigError: " in r.stderr and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_endpoint_credentials_stay_out_of_its_name():
    from fleetwise.serve.router_app import Endpoint, _redacted

    e = Endpoint("http://user:s3cret@127.0.0.1:8000/")
    assert (e.name, e.url) == ("127.0.0.1:8000", "http://user:s3cret@127.0.0.1:8000")  # the name goes into headers, metrics and errors
    assert _redacted(e.url) == "http://user:***@127.0.0.1:8000"


def test_check_policy_refuses_a_nan_router_weight():
    r = subprocess.run([sys.executable, "-m", "fleetwise", "check-policy", "router", "cache-aware", "-p", "prefix_weight=NaN"], capture_output=True, text=True, timeout=GUARD)
    assert r.returncode == 2 and "prefix_weight must be a finite number >= 0, got nan" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_scraped_metrics_parse_label_values_with_braces_and_quotes():
    text = 'vllm:num_requests_waiting{model_name="a}b",engine="0"} 3\nvllm:num_requests_waiting{model_name="q\\"x",engine="1"} 4\n'
    s = prom.parse(text)
    assert sorted((lbl["model_name"], v) for lbl, v in s["vllm:num_requests_waiting"]) == [('a}b', 3.0), ('q"x', 4.0)]
    assert prom.total(s, "vllm:num_requests_waiting") == 7
    g = prom.Gauge("fleetwise_x", "help")
    g.set(1, endpoint='we{ird}"\\name')
    assert prom.parse(prom.render([g]))["fleetwise_x"] == [({"endpoint": 'we{ird}"\\name'}, 1.0)]


@pytest.mark.parametrize("command", [["serve-router", "--endpoint", "http://127.0.0.1:1"], ["serve-engine"]])
def test_serving_on_a_port_in_use_or_a_foreign_address_is_exit_2(command):
    import socket

    with socket.socket() as taken:  # a port some other process listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "fleetwise", *command, "--port", str(port)], capture_output=True, text=True, timeout=GUARD)
    assert r.returncode == 2 and f"--host 127.0.0.1 --port {port}: cannot listen there: Address already in use" in r.stderr, r.stderr
    # An address of no interface of this machine (TEST-NET-1, RFC 5737).
    r = subprocess.run([sys.executable, "-m", "fleetwise", *command, "--host", "192.0.2.1", "--port", "8123"], capture_output=True, text=True, timeout=GUARD)
    assert r.returncode == 2 and "--host 192.0.2.1 --port 8123: cannot listen there:" in r.stderr and "Traceback" not in r.stderr, r.stderr
