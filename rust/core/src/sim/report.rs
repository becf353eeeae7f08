//! What a run produces: every request's final state, per-instance reports, the optional
//! iteration log.

use crate::error::{Error, Result};
use crate::instance::{InstanceStats, IterationRecord};
use crate::memory::MemoryPlan;
use crate::request::{Request, Status};
use crate::sketch::QuantileSketch;
use crate::time::Nanos;
use serde::Serialize;

use super::cluster::Cluster;
use super::mixed_pool::{MixedPoolStats, MixedService};

/// One row per iteration, in columns.
#[derive(Debug, Clone, Default)]
pub struct IterationLog {
    /// Instance index.
    pub instance: Vec<u32>,
    /// Start time.
    pub start: Vec<Nanos>,
    /// End time.
    pub end: Vec<Nanos>,
    /// Prefill tokens.
    pub prefill_tokens: Vec<u64>,
    /// Decodes.
    pub decode_seqs: Vec<u64>,
    /// KV blocks in use.
    pub kv_blocks: Vec<u32>,
    /// Requests waiting after scheduling.
    pub waiting: Vec<u32>,
    /// Requests running after scheduling.
    pub running: Vec<u32>,
}

impl IterationLog {
    /// Adds the row of `instance`'s iteration `r`.
    pub(super) fn push(&mut self, instance: u32, r: &IterationRecord) {
        self.instance.push(instance);
        self.start.push(r.start);
        self.end.push(r.end);
        self.prefill_tokens.push(r.prefill_tokens);
        self.decode_seqs.push(r.decode_seqs);
        self.kv_blocks.push(r.kv_blocks);
        self.waiting.push(r.waiting);
        self.running.push(r.running);
    }
}

/// Per-instance facts and counters.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    /// Pool index.
    pub pool: u32,
    /// Pool name.
    pub pool_name: String,
    /// Memory plan of one GPU.
    pub memory: MemoryPlan,
    /// GPUs of the instance.
    pub gpus: u32,
    /// Nodes the instance spans.
    pub nodes: u32,
    /// Energy of its GPUs over the whole run (busy and idle), joules.
    pub energy_joules: f64,
    /// Bytes its host link carried (per GPU).
    pub host_link_bytes: u64,
    /// Prompt tokens found in the prefix cache at admission.
    pub prefix_hit_tokens: u64,
    /// Prompt tokens looked up in the prefix cache at admission.
    pub prefix_lookup_tokens: u64,
    /// Fraction of its host link's capacity used over the run.
    pub host_link_utilisation: f64,
    /// Counters.
    pub stats: InstanceStats,
    /// Its time in Splitwise's mixed pool, when the cluster has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixed_pool: Option<MixedPoolStats>,
}

/// Everything a run produces.
pub struct SimOutput {
    /// Final state of every request, in input order (empty from a streaming run, whose results
    /// are in its `RequestColumns`).
    pub requests: Vec<Request>,
    /// Rejection reason per rejected request index.
    pub rejections: Vec<(u32, String)>,
    /// Inter-token latencies, seconds.
    pub itl: QuantileSketch,
    /// Per-instance report.
    pub instances: Vec<InstanceReport>,
    /// Iteration log, when asked for.
    pub iterations: Option<IterationLog>,
    /// Events processed (arrivals, wakes, iteration ends).
    pub events: u64,
    /// Of `events`, those instances ran ahead of the run's queue between arrivals (`run_ahead.rs`).
    pub events_run_ahead: u64,
    /// Of `events_run_ahead`, those run as back-to-back group passes (`group_loop.rs`).
    pub events_in_group_loop: u64,
    /// Time of the last event that was not a rejected arrival (the last completion, in a run
    /// whose requests all finish): what energy, cost and utilisation count up to.
    pub end_time: Nanos,
    /// How Splitwise's mixed pool served each request, when the cluster has one.
    pub mixed_pool: Option<Vec<MixedService>>,
}

impl Cluster<'_> {
    /// Ends the run at `end` after `events` events: fails on a policy's pending error or a request
    /// that never finished, otherwise reports every instance and hands back the requests.
    pub(super) fn into_output(mut self, end: Nanos, events: u64) -> Result<SimOutput> {
        for inst in self.instances.iter_mut() {
            if let Some(e) = inst.take_policy_error() {
                self.stopped_by(&e);
                return Err(e);
            }
            inst.settle_decodes(self.reqs);
        }
        let retired = self.retirement.as_ref().map_or(0, |r| r.retired());
        if let Some((i, r)) = self.reqs.iter().enumerate().skip(retired).find(|(_, r)| !matches!(r.status, Status::Finished | Status::Rejected)) {
            let e = Error::Simulation { message: format!("request {i} never finished (status {:?}, {} of {} tokens generated)", r.status, r.generated, r.output) };
            self.stopped_by(&e);
            return Err(e);
        }
        let transfers = &self.transfers;
        let pool_names = &self.pool_names;
        let reports = self
            .instances
            .iter()
            .enumerate()
            .map(|(i, inst)| InstanceReport {
                host_link_bytes: transfers.link_bytes(i),
                prefix_hit_tokens: inst.prefix_stats().0,
                prefix_lookup_tokens: inst.prefix_stats().1,
                host_link_utilisation: transfers.utilisation(i, end),
                pool: inst.pool,
                pool_name: pool_names[inst.pool as usize].clone(),
                memory: inst.plan().clone(),
                gpus: inst.cost().gpus(),
                nodes: inst.cost().nodes(),
                energy_joules: inst.energy_joules(end),
                stats: InstanceStats { experts: inst.experts().map(|m| m.stats.clone()), speculative: inst.speculation().map(|s| s.stats.clone()), ..inst.stats.clone() },
                mixed_pool: self.mixed_pool.as_ref().map(|m| m.instance_stats(i, end)),
            })
            .collect();
        let mixed_pool = self.mixed_pool.as_ref().map(|m| m.services());
        let requests = match self.retirement.as_mut() {
            Some(r) => {
                r.finish(self.reqs);
                *self.reqs = Vec::new();
                Vec::new()
            }
            None => std::mem::take(self.reqs),
        };
        Ok(SimOutput { requests, rejections: self.rejections, itl: self.itl, instances: reports, iterations: self.log, events, events_run_ahead: self.ahead.run, events_in_group_loop: self.ahead.grouped, end_time: end, mixed_pool })
    }
}
