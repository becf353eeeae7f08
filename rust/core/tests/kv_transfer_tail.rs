//! The KV handoff of disaggregated serving, hand-computed: a serialized transfer moves the whole
//! prompt's KV after the prefill; a layer-wise one hides all but the last layer behind it, and
//! what shows after the first token is the last layer, the transfer's setup latency and whatever
//! of the overlapped flow the prefill did not cover.

mod common;

use common::gpu;
use fleetwise_core::request::Request;
use fleetwise_core::router::RouterConfig;
use fleetwise_core::sim::{simulate, KvTransfer, Role, SimConfig, Workload};

/// One prefill and one decode instance (Llama-3-8B, one H100 each, `nic` bytes/s NICs), the
/// prefill one sending KV `how` with `latency` seconds of setup per transfer.
fn split(how: KvTransfer, nic: f64, latency: f64) -> SimConfig {
    let mut g = gpu(80_000_000_000);
    g.nic_bandwidth = nic;
    let mut prefill = common::pool(1, g);
    prefill.role = Role::Prefill;
    prefill.kv_transfer = how;
    prefill.kv_transfer_latency = latency;
    let mut decode = prefill.clone();
    decode.name = "decode".into();
    decode.role = Role::Decode;
    common::sim_config(vec![prefill, decode], RouterConfig::LeastOutstandingTokens, false)
}

/// The one request of a run: a 2000-token prompt, 10 output tokens.
fn run(cfg: &SimConfig) -> Request {
    let w = Workload { arrival: vec![0], prompt: vec![2000], output: vec![10], ..Default::default() };
    let out = simulate(cfg, &w).unwrap();
    out.requests[0].clone()
}

/// Milliseconds from the first token (the prefill's end) to the end of the KV transfer.
fn tail_ms(r: &Request) -> f64 {
    (r.transfer.1 as f64 - r.first_token as f64) * 1e-6
}

// Llama-3-8B's KV: 32 layers x 2 x 8 heads x 128 x 2 B = 131072 B a token, 262.144 MB for the
// prompt, 8.192 MB a layer. Each KV flow first waits the NIC's 5 us and the setup latency.
const PROMPT_KV: f64 = 262.144e6;
const LAYER_KV: f64 = PROMPT_KV / 32.0;

#[test]
fn serialized_transfer_shows_whole_after_the_prompt() {
    // 4.005 ms of latency + 262.144 MB / 50 GB/s = 5.24288 ms: 9.24788 ms.
    let r = run(&split(KvTransfer::Serialized, 50e9, 4e-3));
    assert!((tail_ms(&r) - (4.005 + PROMPT_KV / 50e9 * 1e3)).abs() < 2e-3, "{}", tail_ms(&r));
    assert!(r.transfer.0 >= r.first_token);
}

#[test]
fn layerwise_transfer_leaves_the_last_layer_and_the_setup_latency() {
    // The prefill (~60 ms) covers the first 31 layers (5.08 ms of link); after it the last
    // layer: 4.005 ms + 8.192 MB / 50 GB/s = 4.005 + 0.16384 = 4.16884 ms.
    let r = run(&split(KvTransfer::Layerwise, 50e9, 4e-3));
    assert!(r.transfer.0 < r.first_token, "starts during the prefill");
    assert!((tail_ms(&r) - (4.005 + LAYER_KV / 50e9 * 1e3)).abs() < 2e-3, "{}", tail_ms(&r));
    // Without setup latency only the NIC latency and the last layer remain: 0.16884 ms.
    let r = run(&split(KvTransfer::Layerwise, 50e9, 0.0));
    assert!((tail_ms(&r) - (0.005 + LAYER_KV / 50e9 * 1e3)).abs() < 2e-3, "{}", tail_ms(&r));
    // Serialized costs 9.24788 ms; layer-wise 4.16884 ms.
    let s = run(&split(KvTransfer::Serialized, 50e9, 4e-3));
    assert!(tail_ms(&s) > 2.2 * 4.16884);
}

#[test]
fn a_link_slower_than_the_prefill_shows_the_uncovered_part() {
    // 1 GB/s NICs: the first 31 layers (253.952 MB) take 253.952 ms + 4.005 ms from the start of
    // the prefill iteration, far past its end; the last layer then takes 4.005 + 8.192 ms.
    let r = run(&split(KvTransfer::Layerwise, 1e9, 4e-3));
    let prefill_ms = (r.first_token - r.transfer.0) as f64 * 1e-6;
    assert!(prefill_ms > 10.0 && prefill_ms < 200.0, "prefill {prefill_ms} ms");
    let bulk_end = 4.005 + (PROMPT_KV - LAYER_KV) / 1e9 * 1e3;
    let want = bulk_end - prefill_ms + 4.005 + LAYER_KV / 1e9 * 1e3;
    assert!((tail_ms(&r) - want).abs() < 2e-3, "tail {} ms, want {want}", tail_ms(&r));
}

#[test]
fn a_kv_transfer_latency_out_of_range_is_refused() {
    for bad in [-1e-3, 2.0, f64::NAN] {
        let w = Workload { arrival: vec![0], prompt: vec![10], output: vec![2], ..Default::default() };
        let err = simulate(&split(KvTransfer::Layerwise, 50e9, bad), &w).err().expect("refused").to_string();
        assert!(err.contains("cluster.pools.0.kv_transfer_latency"), "{err}");
    }
}
