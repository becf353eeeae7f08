//! Instances that run ahead between arrivals (mixed-role instances, pipelined or not, with
//! nothing watching each event and no flows on the shared network) must give exactly the results of the same run with every event in the run's queue (a
//! per-iteration log turns running ahead off): every request, instance report, the event count,
//! the run's end and every inter-token statistic, on routers that read the instances' loads at
//! arrivals, with preemptions, and with bursts of simultaneous arrivals.

mod common;

use common::gpu;
use fleetwise_core::request::Request;
use fleetwise_core::request_columns::RequestColumns;
use fleetwise_core::router::RouterConfig;
use fleetwise_core::scheduler::{PreemptionMode, SchedulerConfig};
use fleetwise_core::sim::{simulate_keeping, Control, Plugins, PoolConfig, SimOutput, Workload};

/// GPU memory that leaves a two-stage instance of the test model too little KV cache for the load.
const SMALL_GPU: u64 = 10_000_000_000;

/// The run of `pools` under `router` on `w`, with or without the per-iteration log.
fn run(pools: &[PoolConfig], router: &RouterConfig, log: bool, w: &Workload) -> SimOutput {
    let cfg = common::sim_config(pools.to_vec(), router.clone(), log);
    let mut reqs: Vec<Request> = Vec::new();
    simulate_keeping(&cfg, w, &Control::default(), Plugins::default(), &mut reqs).unwrap()
}

/// Asserts that running ahead changed nothing, and that it ran (`ahead`: some events did).
fn assert_same(pools: &[PoolConfig], router: RouterConfig, w: &Workload, what: &str) -> SimOutput {
    let (queued, ahead) = (run(pools, &router, true, w), run(pools, &router, false, w));
    assert_eq!((queued.events_run_ahead, queued.events_in_group_loop), (0, 0), "{what}: a logged run keeps every event in the queue");
    assert!(ahead.events_run_ahead > ahead.events / 2, "{what}: {} of {} events ran ahead", ahead.events_run_ahead, ahead.events);
    assert_eq!(RequestColumns::of(&queued.requests), RequestColumns::of(&ahead.requests), "{what}: requests");
    assert_eq!((queued.events, queued.end_time, queued.rejections.len()), (ahead.events, ahead.end_time, ahead.rejections.len()), "{what}: events, end, rejections");
    assert_eq!(serde_json::to_string(&queued.instances).unwrap(), serde_json::to_string(&ahead.instances).unwrap(), "{what}: instance reports");
    let itl = |o: &SimOutput| (o.itl.count(), o.itl.mean().to_bits(), o.itl.max().to_bits(), [0.5, 0.9, 0.99].map(|q| o.itl.quantile(q).to_bits()));
    assert_eq!(itl(&queued), itl(&ahead), "{what}: inter-token latencies");
    ahead
}

#[test]
fn running_ahead_changes_no_result() {
    let w = common::bursty_workload(1500, 11);
    for pp in [2, 3, 4] {
        let mut piped = common::pool(3, gpu(80_000_000_000));
        piped.parallelism.pp = pp;
        for router in [RouterConfig::RoundRobin, RouterConfig::LeastOutstandingTokens] {
            let out = assert_same(&[piped.clone()], router.clone(), &w, &format!("pp={pp}, {router:?}"));
            // Many of them as group passes back to back (`group_loop.rs`), whose results are
            // the handlers' (the logged run's, above): most with two stages; with more, fewer
            // running groups than stages often leave a stage's batch to the scheduler.
            let share = out.events_in_group_loop as f64 / out.events_run_ahead as f64;
            assert!(share > if pp == 2 { 0.5 } else { 0.05 }, "pp={pp}, {router:?}: {} of {} events ran ahead in the group loop", out.events_in_group_loop, out.events_run_ahead);
        }
    }
    // A cache too small for the load: preemptions by recompute while batches are in flight.
    let mut small = common::pool(2, gpu(SMALL_GPU));
    small.parallelism.pp = 2;
    let out = assert_same(&[small], RouterConfig::LeastOutstandingTokens, &w, "preempting");
    assert!(RequestColumns::of(&out.requests).preemptions.iter().sum::<u32>() > 0, "the small GPUs preempt");
}

#[test]
fn colocated_instances_run_ahead_unless_they_swap() {
    // A pipelined pool beside an unpipelined one: both run ahead, and the results are those of
    // the fully queued run; a pool that swaps KV over the shared host links keeps its events in
    // the run's queue.
    let w = common::bursty_workload(800, 3);
    let mut piped = common::pool(2, gpu(80_000_000_000));
    piped.parallelism.pp = 2;
    let mut plain = common::pool(2, gpu(80_000_000_000));
    plain.name = "plain".into();
    let both = assert_same(&[piped, plain.clone()], RouterConfig::RoundRobin, &w, "pipelined and colocated pools");
    assert!(both.events_run_ahead > both.events - 2 * 800, "{} of {} events ran ahead", both.events_run_ahead, both.events);
    assert_same(&[plain.clone()], RouterConfig::LeastOutstandingTokens, &w, "colocated");
    let mut swapping = common::pool(2, gpu(20_000_000_000));
    swapping.scheduler = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: PreemptionMode::Swap, swap_space_gb: 16.0 };
    let out = run(&[swapping], &RouterConfig::LeastOutstandingTokens, false, &w);
    assert_eq!(out.events_run_ahead, 0, "a swapping instance's events stay in the run's queue");
    assert!(RequestColumns::of(&out.requests).preemptions.iter().sum::<u32>() > 0, "it swaps");
}
