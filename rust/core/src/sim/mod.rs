//! The discrete-event simulation of a cluster: arrivals, routing, iterations, completions.
//!
//! Arrivals come from a time-sorted table and are merged with the event heap; at equal times an
//! arrival runs before any heap event, exactly as if every arrival had been pushed onto the heap
//! before the run (so with the lowest sequence numbers). An arrival is routed at once; an idle
//! instance that receives work gets a `Wake` event at the same instant, which runs after every
//! other arrival of that instant, so simultaneous arrivals share the first iteration. When an
//! iteration ends its tokens are applied and the next iteration starts at the same instant.
//! An iteration that swaps KV first moves the bytes as a flow over the instance's host link (in
//! the shared [`Network`](crate::network::Network)); its compute starts when the flow completes. Offloaded weights stream in
//! as flows too (flash drive then host link, or host link alone), concurrently with the compute
//! when overlap is on, before it otherwise; the iteration ends when compute and streams are done.
//!
//! Layout: [`config`] (what Python sends), `cluster` (the run's state and its event handlers),
//! `arrivals`, `iterations` (an iteration's phases), `pipeline` (batches in flight through
//! asynchronous pipeline stages), `run_ahead` (instances running their own events between
//! arrivals), `group_loop` (group passes back to back), `transfers` (the network wiring),
//! [`disaggregation`] (roles and KV handoffs), [`mixed_pool`] (Splitwise's mixed pool), [`plugins`], [`control`], [`report`], `retire` (streaming runs); the
//! domain-free event loop is [`crate::event`].

mod arrivals;
mod cluster;
pub mod config;
pub mod control;
pub mod disaggregation;
mod group_loop;
mod iterations;
pub mod mixed_pool;
mod pipeline;
pub mod plugins;
pub mod report;
mod retire;
mod run_ahead;
mod transfers;

pub use cluster::Event;
pub use config::{KvLink, KvTransfer, Parallelism, PoolConfig, SimConfig, Workload, DEFAULT_KV_TRANSFER_LATENCY};
pub use control::Control;
pub use disaggregation::{DecodeChoice, FewestOutstandingTokens, Role};
pub use mixed_pool::{MixedPoolConfig, MixedPoolStats, MixedService};
pub use plugins::{BatchSchedulerFactory, EvictorFactory, Plugins};
pub use crate::moe::ExpertCacheFactory;
pub use report::{InstanceReport, IterationLog, SimOutput};

use crate::error::{Error, Result};
use crate::event::EventLoop;
use crate::request::Request;
use crate::request_columns::RequestColumns;
use std::sync::atomic::Ordering;

/// Runs the simulation of `workload` on the cluster `config` describes.
pub fn simulate(config: &SimConfig, workload: &Workload) -> Result<SimOutput> {
    simulate_with(config, workload, &Control::new())
}

/// [`simulate`], reporting progress to and obeying cancellation from `control`.
pub fn simulate_with(config: &SimConfig, workload: &Workload, control: &Control) -> Result<SimOutput> {
    simulate_plugged(config, workload, control, Plugins::default())
}

/// [`simulate_with`] with `plugins` in place of the configured policies they replace.
pub fn simulate_plugged(config: &SimConfig, workload: &Workload, control: &Control, plugins: Plugins) -> Result<SimOutput> {
    simulate_keeping(config, workload, control, plugins, &mut Vec::new())
}

/// [`simulate_plugged`] that leaves every request's state in `reqs` when the run stops with an
/// error (a policy's failure, a request that never finished), so what finished is kept.
pub fn simulate_keeping(config: &SimConfig, workload: &Workload, control: &Control, plugins: Plugins, reqs: &mut Vec<Request>) -> Result<SimOutput> {
    run(config, workload, control, plugins, reqs, None)
}

/// [`simulate_keeping`] that streams the requests' results into `columns` instead of keeping every
/// request's record: each request is written into `reqs` when it arrives and retired into
/// `columns` once it and every earlier request are done (see `retire`), so memory follows the
/// requests in flight, not the workload's size. On success `columns` holds every request and the
/// output's `requests` is empty. When the run stops with a policy's or the simulation's error,
/// `columns` holds every request as it stood (those that never arrived as pending); `reqs` is
/// then of no use (its retired and unarrived slots are vacant).
pub fn simulate_streaming(config: &SimConfig, workload: &Workload, control: &Control, plugins: Plugins, reqs: &mut Vec<Request>, columns: &mut RequestColumns) -> Result<SimOutput> {
    run(config, workload, control, plugins, reqs, Some(columns))
}

/// The event loop of every entry point above.
fn run(config: &SimConfig, workload: &Workload, control: &Control, plugins: Plugins, reqs: &mut Vec<Request>, columns: Option<&mut RequestColumns>) -> Result<SimOutput> {
    let streaming = columns.is_some();
    arrivals::load_requests(workload, reqs, streaming)?;
    let mut cluster = cluster::Cluster::new(config, workload, plugins, reqs)?;
    cluster.retirement = columns.map(|c| {
        *c = RequestColumns::with_capacity(workload.arrival.len());
        retire::Retirement::new(c)
    });
    let mut clock = EventLoop::new();
    let mut events = 0u64;
    // Cancellation and progress are looked at every 4096 events, those run ahead included.
    let mut next_check = 4096u64;
    loop {
        events += 1;
        if events + cluster.ahead.run >= next_check {
            next_check = events + cluster.ahead.run + 4096;
            control.arrived.store(cluster.arrivals.arrived() as u64, Ordering::Relaxed);
            if control.cancel.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
        }
        match clock.step(&mut cluster) {
            Ok(true) => cluster.retire_finished(),
            Ok(false) => {
                events -= 1;
                break;
            }
            Err(e) => {
                cluster.stopped_by(&e);
                return Err(e);
            }
        }
    }
    // Tokens of instances that ran ahead count as the events they carried.
    let events = events.checked_add_signed(cluster.ahead.extra_events).expect("a token carries no more than it ran");
    let end = cluster.last_work;
    cluster.into_output(end, events)
}
