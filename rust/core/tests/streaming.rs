//! A streaming run (`simulate_streaming`: requests written when they arrive, retired into result
//! columns once they and every earlier request are done, their slots zeroed and their pages handed
//! back) must give exactly the results of a run that keeps every request's record, on colocated,
//! preempting, swapping, pipelined and disaggregated clusters; a run that stops part way keeps
//! what finished.

mod common;

use common::gpu;
use fleetwise_core::error::{Error, Result};
use fleetwise_core::instance::Role;
use fleetwise_core::request::Request;
use fleetwise_core::request_columns::RequestColumns;
use fleetwise_core::router::{InstanceLoad, Router, RouterConfig};
use fleetwise_core::scheduler::{PreemptionMode, SchedulerConfig};
use fleetwise_core::sim::{simulate_keeping, simulate_streaming, Control, Plugins, SimConfig, SimOutput, Workload};

/// The bursty LCG workload (`common::bursty_workload`) these tests run.
fn workload(n: usize) -> Workload {
    common::bursty_workload(n, 7)
}

/// The results of `cfg` on `w` kept and streamed: the kept run's columns, the streamed columns,
/// and both outputs.
fn both(cfg: &SimConfig, w: &Workload) -> (RequestColumns, RequestColumns, SimOutput, SimOutput) {
    let mut kept = Vec::new();
    let a = simulate_keeping(cfg, w, &Control::default(), Plugins::default(), &mut kept).unwrap();
    let (mut slots, mut streamed) = (Vec::new(), RequestColumns::default());
    let b = simulate_streaming(cfg, w, &Control::default(), Plugins::default(), &mut slots, &mut streamed).unwrap();
    assert!(b.requests.is_empty() && slots.is_empty(), "a streaming run keeps no request records");
    (RequestColumns::of(&a.requests), streamed, a, b)
}

/// Asserts that the kept and streamed runs of `cfg` agree in every result column and fact.
fn assert_same(cfg: &SimConfig, w: &Workload, what: &str) -> RequestColumns {
    let (a, b, x, y) = both(cfg, w);
    assert_eq!(a.len(), w.arrival.len(), "{what}");
    assert_eq!(a, b, "{what}: request columns");
    assert_eq!((x.events, x.end_time, x.rejections.len()), (y.events, y.end_time, y.rejections.len()), "{what}: events, end time, rejections");
    assert_eq!(serde_json::to_string(&x.instances).unwrap(), serde_json::to_string(&y.instances).unwrap(), "{what}: instance reports");
    assert_eq!((x.itl.count(), x.itl.mean()), (y.itl.count(), y.itl.mean()), "{what}: inter-token latencies");
    b
}

#[test]
fn streaming_equals_keeping_every_request() {
    let w = workload(500);
    let mut plain = common::sim_config(vec![common::pool(4, gpu(20_000_000_000))], RouterConfig::LeastOutstandingTokens, true);
    let c = assert_same(&plain, &w, "colocated, preempting");
    assert!(c.preemptions.iter().sum::<u32>() > 0, "the small GPUs preempt");

    plain.pools[0].scheduler = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: PreemptionMode::Swap, swap_space_gb: 16.0 };
    assert_same(&plain, &w, "swapping");

    let mut piped = common::pool(3, gpu(80_000_000_000));
    piped.parallelism.pp = 2;
    assert_same(&common::sim_config(vec![piped], RouterConfig::RoundRobin, false), &w, "asynchronous pipelines");

    let mut prefill = common::pool(3, gpu(80_000_000_000));
    prefill.role = Role::Prefill;
    let mut decode = common::pool(2, gpu(20_000_000_000));
    decode.name = "decode".into();
    decode.role = Role::Decode;
    let c = assert_same(&common::sim_config(vec![prefill, decode], RouterConfig::LeastOutstandingTokens, false), &w, "disaggregated");
    assert!(c.prefill_instance.iter().filter(|&&p| p != u32::MAX).count() > 400 && c.kv_transfer_ns.iter().any(|&t| t > 0), "requests were handed off");
}

#[test]
fn a_long_run_hands_back_retired_pages_and_still_agrees() {
    // More requests than a release batch (8,192), so whole pages of retired slots are handed back.
    let mut w = workload(20_000);
    for o in w.output.iter_mut() {
        *o = 1 + *o % 8;
    }
    let cfg = common::sim_config(vec![common::pool(8, gpu(80_000_000_000))], RouterConfig::RoundRobin, false);
    let c = assert_same(&cfg, &w, "20,000 requests");
    assert!(c.status.iter().all(|&s| s == 0), "all finished");
}

/// Routes round-robin, then fails at request `fail_at`.
struct FailAt {
    fail_at: u32,
    seen: u32,
}

impl Router for FailAt {
    fn route(&mut self, _req: &Request, loads: &[InstanceLoad]) -> Result<usize> {
        self.seen += 1;
        if self.seen > self.fail_at {
            return Err(Error::Policy { message: "router gave up".into() });
        }
        Ok(self.seen as usize % loads.len())
    }
}

#[test]
fn a_stopped_streaming_run_keeps_the_retired_and_the_rest() {
    let mut w = workload(400);
    for o in w.output.iter_mut() {
        *o = 1 + *o % 8;
    }
    let cfg = common::sim_config(vec![common::pool(2, gpu(80_000_000_000))], RouterConfig::RoundRobin, false);
    let plugins = || Plugins { router: Some(Box::new(FailAt { fail_at: 300, seen: 0 })), ..Default::default() };
    let mut kept = Vec::new();
    assert!(simulate_keeping(&cfg, &w, &Control::default(), plugins(), &mut kept).is_err());
    let (mut slots, mut streamed) = (Vec::new(), RequestColumns::default());
    assert!(matches!(simulate_streaming(&cfg, &w, &Control::default(), plugins(), &mut slots, &mut streamed), Err(Error::Policy { .. })));
    assert_eq!(streamed, RequestColumns::of(&kept), "the streamed columns hold every request as the kept records do");
    assert!(streamed.status.iter().filter(|&&s| s == 0).count() > 0 && streamed.status.contains(&2), "some finished, some never arrived");
}
