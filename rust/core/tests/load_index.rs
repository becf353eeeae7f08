//! Least-outstanding-tokens routes from the cluster's incrementally maintained load index; the
//! results must equal those of the same rule scanning every instance's load per arrival, on
//! colocated, pipelined, swapping and disaggregated clusters (debug builds also check the index
//! against every instance at each arrival).

mod common;

use common::gpu;
use fleetwise_core::error::Result;
use fleetwise_core::instance::Role;
use fleetwise_core::request::{Request, Status};
use fleetwise_core::router::{InstanceLoad, Router, RouterConfig};
use fleetwise_core::scheduler::{PreemptionMode, SchedulerConfig};
use fleetwise_core::sim::{simulate, simulate_plugged, Control, Plugins, SimConfig, Workload};

/// Least outstanding tokens by a scan of every load (lowest index on ties), without the index.
struct Scan;

impl Router for Scan {
    fn route(&mut self, _req: &Request, loads: &[InstanceLoad]) -> Result<usize> {
        Ok((0..loads.len()).min_by_key(|&i| (loads[i].outstanding_tokens, i)).unwrap())
    }
}

/// The bursty LCG workload (`common::bursty_workload`) these tests run.
fn workload(n: usize) -> Workload {
    common::bursty_workload(n, 99)
}

/// Per request: the instance it ended on and its completion time.
type Outcome = Vec<(u32, u64)>;

/// The outcomes of `cfg` routed from the index and by the scan.
fn both(cfg: &SimConfig, w: &Workload) -> (Outcome, Outcome) {
    let key = |o: fleetwise_core::sim::SimOutput| {
        assert!(o.requests.iter().all(|r| r.status == Status::Finished));
        o.requests.iter().map(|r| (r.instance, r.completion)).collect::<Vec<_>>()
    };
    let indexed = key(simulate(cfg, w).unwrap());
    let scanned = key(simulate_plugged(cfg, w, &Control::default(), Plugins { router: Some(Box::new(Scan)), ..Default::default() }).unwrap());
    (indexed, scanned)
}

#[test]
fn indexed_routing_equals_scanning_every_load() {
    let w = workload(400);
    let mut plain = common::sim_config(vec![common::pool(6, gpu(20_000_000_000))], RouterConfig::LeastOutstandingTokens, false);
    let (a, b) = both(&plain, &w);
    assert_eq!(a, b, "colocated");
    let spread: std::collections::BTreeSet<u32> = a.iter().map(|r| r.0).collect();
    assert_eq!(spread.len(), 6, "every instance takes requests");

    plain.pools[0].scheduler = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: PreemptionMode::Swap, swap_space_gb: 16.0 };
    let (a, b) = both(&plain, &w);
    assert_eq!(a, b, "swapping");

    let mut piped = common::pool(3, gpu(80_000_000_000));
    piped.parallelism.pp = 2;
    let cfg = common::sim_config(vec![piped], RouterConfig::LeastOutstandingTokens, false);
    let (a, b) = both(&cfg, &w);
    assert_eq!(a, b, "asynchronous pipelines");

    let mut prefill = common::pool(3, gpu(80_000_000_000));
    prefill.role = Role::Prefill;
    let mut decode = common::pool(2, gpu(20_000_000_000));
    decode.name = "decode".into();
    decode.role = Role::Decode;
    let cfg = common::sim_config(vec![prefill, decode], RouterConfig::LeastOutstandingTokens, false);
    let (a, b) = both(&cfg, &w);
    assert_eq!(a, b, "disaggregated");
}
