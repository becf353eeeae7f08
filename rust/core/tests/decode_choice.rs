//! The default decode choice counts the KV of handoffs already in flight to each decode instance,
//! so handoffs that start together spread over the decode instances.

mod common;

use common::gpu;
use fleetwise_core::error::Result;
use fleetwise_core::instance::Role;
use fleetwise_core::request::{Request, Status};
use fleetwise_core::router::{InstanceLoad, RouterConfig};
use fleetwise_core::sim::{simulate, simulate_plugged, Control, DecodeChoice, FewestOutstandingTokens, SimConfig, Workload};
use std::sync::{Arc, Mutex};

/// One prefill instance (0) and three decode instances (1, 2, 3), 80 GB each.
fn disaggregated() -> SimConfig {
    let mut prefill = common::pool(1, gpu(80_000_000_000));
    prefill.role = Role::Prefill;
    let mut decode = prefill.clone();
    decode.name = "decode".into();
    decode.count = 3;
    decode.role = Role::Decode;
    common::sim_config(vec![prefill, decode], RouterConfig::RoundRobin, false)
}

/// Six requests of 1,000 prompt and 50 output tokens arriving together: prefilled in one batch, so
/// their six handoffs start at the same instant.
fn simultaneous() -> Workload {
    Workload { arrival: vec![0; 6], prompt: vec![1000; 6], output: vec![50; 6], ..Workload::default() }
}

#[test]
fn simultaneous_handoffs_spread_over_the_decode_instances() {
    let out = simulate(&disaggregated(), &simultaneous()).unwrap();
    let decoded_on: Vec<u32> = out.requests.iter().map(|r| r.instance).collect();
    // Each handoff's 1,001 tokens (prompt + first token) count on its decode instance at once:
    // lowest index on ties, so 1, 2, 3, then 1, 2, 3 again. Counting only the running decodes,
    // all six would pick instance 1 (every decode instance at 0 until a transfer lands).
    assert_eq!(decoded_on, vec![1, 2, 3, 1, 2, 3]);
    assert!(out.requests.iter().all(|r| r.status == Status::Finished));
    for d in 1..4 {
        assert_eq!(out.instances[d].stats.decode_tokens, 2 * 49, "instance {d}");
    }
}

/// The built-in choice, recording the decode loads it was shown.
struct Recording(Arc<Mutex<Vec<Vec<u64>>>>);

impl DecodeChoice for Recording {
    fn candidates(&mut self, index: u32, req: &Request, decoders: &[u32], loads: &[InstanceLoad], preferred: Option<u32>) -> Result<Vec<u32>> {
        self.0.lock().unwrap().push(loads.iter().map(|l| l.outstanding_tokens).collect());
        FewestOutstandingTokens.candidates(index, req, decoders, loads, preferred)
    }
}

#[test]
fn a_plugged_choice_sees_the_tokens_in_flight_and_the_same_results() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let plugins = fleetwise_core::sim::Plugins { decode_choice: Some(Box::new(Recording(seen.clone()))), ..Default::default() };
    let out = simulate_plugged(&disaggregated(), &simultaneous(), &Control::default(), plugins).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[..4], [vec![0, 0, 0], vec![1001, 0, 0], vec![1001, 1001, 0], vec![1001, 1001, 1001]]);
    let native = simulate(&disaggregated(), &simultaneous()).unwrap();
    let key = |o: &fleetwise_core::sim::SimOutput| o.requests.iter().map(|r| (r.instance, r.completion)).collect::<Vec<_>>();
    assert_eq!(key(&out), key(&native));
}
