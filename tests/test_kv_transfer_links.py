"""KV transfer times between prefill and decode instances, by hand (docs/seed-systems.md,
"Disaggregation"): `kv_transfer_latency` + the link's latency + prompt x KV bytes per token over
the link (every GPU of the instance sends its shard in parallel), the prefill pool's `kv_link`
choosing NIC or NVLink at both ends of the flow."""

from __future__ import annotations

import polars as pl
import pytest

import fleetwise
from fleetwise.catalog import builtin_gpus, builtin_models

H100 = builtin_gpus()["h100-sxm"]
LLAMA = builtin_models()["llama-3-8b"]
# Llama-3-8B: K and V, 32 layers, 8 KV heads of 128, 2 bytes = 131,072 bytes per token.
KV_BYTES = 2 * LLAMA.num_layers * LLAMA.num_kv_heads * LLAMA.head_dim * LLAMA.dtype_bytes
SETUP = 4e-3  # the default kv_transfer_latency
PROMPT = 4000


def _transfer_ns(tmp_path, prefill: dict, decode: dict, arrivals=(0,)) -> list[int]:
    """`kv_transfer_ns` of 4000-token prompts arriving at `arrivals` (seconds) on one prefill and
    one decode H100 of Llama-3-8B with these extra pool settings."""
    path = tmp_path / "trace.parquet"
    pl.DataFrame({"arrival_ns": [int(a * 1e9) for a in arrivals], "prompt_tokens": [PROMPT] * len(arrivals),
                  "output_tokens": [5] * len(arrivals)}).write_parquet(path)
    base = {"count": 1, "gpu": "h100-sxm", "model": "llama-3-8b"}
    scenario = {
        "name": "kv-links", "seed": 1,
        "cluster": {"engine": "fleetwise-torch", "router": {"kind": "least-outstanding-tokens"}, "pools": [
            {**base, "name": "p", "role": "prefill", **prefill}, {**base, "name": "d", "role": "decode", **decode}]},
        "workload": {"arrivals": {"kind": "trace", "format": "parquet", "path": str(path)}},
    }
    return fleetwise.simulate(scenario).requests["kv_transfer_ns"].to_list()


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def test_serialized_transfer_over_the_nics_by_hand(tmp_path):
    # 4 ms + 5 us (NIC latency) + 524,288,000 bytes / 50 GB/s = 14.49076 ms.
    hand = SETUP + H100.nic_latency + PROMPT * KV_BYTES / H100.nic_bandwidth
    assert _transfer_ns(tmp_path, {}, {}) == [pytest.approx(_ns(hand), abs=2)]


@pytest.mark.parametrize("decode", [{}, {"kv_link": "nvlink"}])
def test_a_prefill_pool_on_nvlink_transfers_at_nvlink_speed_at_both_ends(tmp_path, decode):
    # 4 ms + 2 us + 524,288,000 bytes / 450 GB/s = 5.167085 ms. It used to enter the decode
    # instance by its NIC unless the decode pool said nvlink too: 14.487760 ms, the NIC's time.
    # The decode pool leaves kv_link out or repeats the prefill pool's.
    hand = SETUP + H100.link_latency + PROMPT * KV_BYTES / H100.link_bandwidth
    got = _transfer_ns(tmp_path, {"kv_link": "nvlink"}, decode)
    assert got == [pytest.approx(_ns(hand), abs=2)]


@pytest.mark.parametrize("prefill, decode, message", [
    ({}, {"kv_link": "nvlink"}, "cluster.pools.1.kv_link: decode pool 'd' sets nvlink, which is not used: the pool that sends the KV decides its transfers, and prefill pool 'p' says nic"),
    ({"kv_link": "nvlink"}, {"kv_link": "nic"}, "cluster.pools.1.kv_link: decode pool 'd' sets nic, which is not used: the pool that sends the KV decides its transfers, and prefill pool 'p' says nvlink"),
    ({}, {"kv_transfer": "layerwise"}, "cluster.pools.1.kv_transfer: decode pool 'd' sets layerwise, which is not used: the pool that sends the KV decides its transfers, and prefill pool 'p' says serialized"),
    ({"kv_transfer_latency": 0.001}, {"kv_transfer_latency": 0.004}, "cluster.pools.1.kv_transfer_latency: decode pool 'd' sets 0.004, which is not used: the pool that sends the KV decides its transfers, and prefill pool 'p' says 0.001"),
])
def test_a_decode_pool_setting_the_sender_overrides_is_refused(tmp_path, prefill, decode, message):
    # A decode pool on NVLink behind a NIC prefill pool received at NIC speed without a word (the
    # sending pool decides); now refused, a decode pool naming the default included. Repeating the
    # prefill pool's value is fine.
    from fleetwise.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _transfer_ns(tmp_path, prefill, decode)
    assert message in str(info.value) and "Value error" not in str(info.value)
    hand = 1e-3 + H100.nic_latency + PROMPT * KV_BYTES / H100.nic_bandwidth
    assert _transfer_ns(tmp_path, {"kv_transfer_latency": 0.001}, {"kv_transfer_latency": 0.001}) == [pytest.approx(_ns(hand), abs=2)]


def test_layerwise_over_nvlink_leaves_the_setup_and_one_layer(tmp_path):
    # After the first token: 4 ms + 2 us + one layer's KV (524,288,000 / 32 bytes) over NVLink.
    hand = SETUP + H100.link_latency + PROMPT * KV_BYTES / LLAMA.num_layers / H100.link_bandwidth
    got = _transfer_ns(tmp_path, {"kv_link": "nvlink", "kv_transfer": "layerwise"}, {})
    assert got == [pytest.approx(_ns(hand), abs=2)]


def test_two_transfers_at_once_share_the_link(tmp_path):
    # Both prompts finish in one prefill iteration; their flows share the NIC: each takes twice
    # the bytes' time after the latencies.
    hand = SETUP + H100.nic_latency + 2 * PROMPT * KV_BYTES / H100.nic_bandwidth
    assert _transfer_ns(tmp_path, {}, {}, arrivals=(0, 0)) == [pytest.approx(_ns(hand), abs=2)] * 2


@pytest.mark.parametrize("prefill, decode, message", [
    ({}, {"model": "llama-3-70b", "parallelism": {"tp": 4}}, "cluster.pools.1.model: decode pool 'd' has llama-3-70b but prefill pool 'p' has llama-3-8b: they must agree on the model whose KV it continues"),
    ({}, {"quantization": {"kv_cache": "fp8"}}, "cluster.pools.1.quantization.kv_cache: decode pool 'd' has fp8 but prefill pool 'p' has bf16: they must agree on the KV cache format it receives"),
    ({"role": "mixed"}, {}, "cluster.pools.1.role: decode pool 'd' has no prefill pool to receive KV from"),
    ({}, {"role": "prefill"}, "cluster.pools.0.role: prefill pool 'p' has no decode pool to send its KV to"),
    ({"role": "decode"}, {}, "cluster.pools.0.role: every pool has role decode: some pool must take arrivals"),
])
def test_a_decode_pool_must_continue_what_its_prefill_pools_send(tmp_path, prefill, decode, message):
    # A decode pool of another model (or KV format) ran on the prefill pool's KV with exit 0, and a
    # decode pool beside mixed pools only was never used but charged its idle power and price. The
    # schema refuses pools without a partner too (the core refused them only when the point ran).
    from fleetwise.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _transfer_ns(tmp_path, prefill, decode)
    assert message in str(info.value)
