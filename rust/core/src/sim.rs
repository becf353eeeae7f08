//! The discrete-event simulation of a cluster: arrivals, routing, iterations, completions.
//!
//! Arrivals come from a time-sorted table and are merged with the event heap; at equal times an
//! arrival runs before any heap event, exactly as if every arrival had been pushed onto the heap
//! before the run (so with the lowest sequence numbers). An arrival is routed at once; an idle
//! instance that receives work gets a `Wake` event at the same instant, which runs after every
//! other arrival of that instant, so simultaneous arrivals share the first iteration. When an
//! iteration ends its tokens are applied and the next iteration starts at the same instant.
//! An iteration that swaps KV first moves the bytes as a flow over the instance's host link (in
//! the shared [`Network`]); its compute starts when the flow completes. Offloaded weights stream in
//! as flows too (flash drive then host link, or host link alone), concurrently with the compute
//! when overlap is on, before it otherwise; the iteration ends when compute and streams are done.

use crate::calibration::Efficiency;
use crate::error::{Error, Result};
use crate::event::{Event, EventQueue};
use crate::hardware::{GpuSpec, PimSpec};
use crate::offload::{OffloadSpec, Tier};
use crate::instance::{ExpertSetup, Instance, InstanceStats, IterationRecord, IterationStart, Parallelism, Role};
use crate::network::{FlowId, LinkId, LinkSpec, Network};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::memory::{MemoryConfig, MemoryPlan};
use crate::model::ModelSpec;
use crate::moe::{ExpertConfig, ExpertTier, RoutingTrace};
use std::sync::Arc;
use crate::request::{Request, Status};
use crate::router::{InstanceLoad, Router, RouterConfig};
use crate::prefix::PrefixEvictor;
use crate::scheduler::{Planner, SchedulerConfig};
use crate::sketch::QuantileSketch;
use crate::time::{at, ns_to_secs, Nanos, MAX_TIME_NS};
use serde::{Deserialize, Serialize};

/// A group of identical instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// Number of instances.
    pub count: u32,
    /// GPU of every instance.
    pub gpu: GpuSpec,
    /// Model served.
    pub model: ModelSpec,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Pipeline-parallel stages (GPUs per instance = tp x pp).
    #[serde(default = "one")]
    pub pp: u32,
    /// Micro-batches per iteration with pipeline parallelism (default: pp).
    #[serde(default)]
    pub microbatches: Option<u32>,
    /// GPUs per node (NVLink domain); instances larger than a node use the NICs between nodes.
    #[serde(default = "eight")]
    pub gpus_per_node: u32,
    /// Expert-parallel degree for MoE models (1, or equal to tp).
    #[serde(default = "one")]
    pub ep: u32,
    /// Cost-model efficiency factors for this GPU.
    pub calibration: Efficiency,
    /// Memory settings.
    pub memory: MemoryConfig,
    /// Batch scheduler.
    pub scheduler: SchedulerConfig,
    /// Power cap per GPU, watts (none: the GPU's TDP).
    #[serde(default)]
    pub power_cap_watts: Option<f64>,
    /// A PIM device attached to each GPU's memory.
    #[serde(default)]
    pub pim: Option<PimSpec>,
    /// Weights kept in host DRAM or flash and streamed in.
    #[serde(default)]
    pub offload: Option<OffloadSpec>,
    /// Keep prompt prefixes cached and share them between requests (needs hashes in the workload).
    #[serde(default)]
    pub prefix_caching: bool,
    /// Mixture-of-experts settings: expert placement, routing, caches, prefetch, token grouping.
    #[serde(default)]
    pub experts: Option<ExpertConfig>,
    /// Role in a disaggregated cluster (mixed, prefill, decode).
    #[serde(default)]
    pub role: Role,
    /// Prefill instances: send KV after the prefill (`serialized`) or layer by layer during it (`layerwise`).
    #[serde(default)]
    pub kv_transfer: KvTransfer,
    /// Link KV transfers leave and enter this pool's instances by: the NICs, or NVLink when
    /// prefill and decode instances share nodes (DistServe's high node affinity).
    #[serde(default)]
    pub kv_link: KvLink,
}

/// When a prefill instance sends a request's KV cache to its decode instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvTransfer {
    /// After the prefill iteration ends.
    #[default]
    Serialized,
    /// From the start of the prefill iteration that completes the prompt, overlapping it (Splitwise).
    Layerwise,
}

/// Which links carry an instance's KV transfers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvLink {
    /// The GPUs' NICs (instances on different nodes).
    #[default]
    Nic,
    /// NVLink (prefill and decode instances on the same node).
    Nvlink,
}

fn one() -> u32 {
    1
}

fn eight() -> u32 {
    8
}

/// Everything the core needs to run: pools, router, seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Instance pools.
    pub pools: Vec<PoolConfig>,
    /// Router across all instances.
    pub router: RouterConfig,
    /// Keep one row per iteration (for plots and tests; off for large runs).
    #[serde(default)]
    pub record_iterations: bool,
    /// Tokens each prefix-block hash of the workload covers (e.g. 512 in Mooncake traces).
    #[serde(default)]
    pub hash_block_tokens: Option<u32>,
}

/// The requests to replay: arrival times (sorted), prompt and output tokens.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Arrival times, non-decreasing.
    pub arrival: Vec<Nanos>,
    /// Prompt tokens per request.
    pub prompt: Vec<u32>,
    /// Output tokens per request.
    pub output: Vec<u32>,
    /// Prefix-block hashes per request (empty, or one list per request).
    pub hashes: Vec<Vec<u64>>,
    /// A recorded expert routing trace, for pools whose experts replay it.
    pub routing: Option<Arc<RoutingTrace>>,
}

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
    fn push(&mut self, instance: u32, r: &IterationRecord) {
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

/// The transfers of a run: each instance's host link (and flash drive, with flash offload) in one
/// shared network, and which instance each flow belongs to.
struct Transfers {
    network: Network,
    host_link: Vec<Option<LinkId>>,
    flash_link: Vec<Option<LinkId>>,
    kv_out: Vec<LinkId>,
    kv_in: Vec<LinkId>,
    owner: BTreeMap<FlowId, Owner>,
    scheduled: Option<u64>,
}

/// Whose a flow is: an instance's iteration (swap, weight stream) or a request's KV handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Instance(u32),
    Handoff(u32),
}

impl Transfers {
    fn new(instances: &[Instance], pools: &[PoolConfig]) -> Result<Self> {
        let mut links = Vec::new();
        let mut host_link = Vec::with_capacity(instances.len());
        let mut flash_link = Vec::with_capacity(instances.len());
        let mut kv_out = Vec::with_capacity(instances.len());
        let mut kv_in = Vec::with_capacity(instances.len());
        for (i, inst) in instances.iter().enumerate() {
            let pool = &pools[inst.pool as usize];
            let gpu = &pool.gpu;
            let gpus = inst.cost().gpus() as f64;
            let (bw, lat) = match pool.kv_link {
                KvLink::Nvlink => (gpu.link_bandwidth, gpu.link_latency),
                KvLink::Nic if gpu.nic_bandwidth > 0.0 => (gpu.nic_bandwidth, gpu.nic_latency),
                KvLink::Nic => (gpu.host_link_bandwidth.max(gpu.link_bandwidth), gpu.host_link_latency),
            };
            // Every GPU of the instance sends (or receives) its shard in parallel.
            links.push(LinkSpec { name: format!("instance{i}.kv_out"), bandwidth: bw * gpus, latency: lat });
            kv_out.push((links.len() - 1) as LinkId);
            links.push(LinkSpec { name: format!("instance{i}.kv_in"), bandwidth: bw * gpus, latency: 0.0 });
            kv_in.push((links.len() - 1) as LinkId);
            let mut add = |name: String, bandwidth: f64, latency: f64| {
                links.push(LinkSpec { name, bandwidth, latency });
                Some((links.len() - 1) as LinkId)
            };
            host_link.push(if gpu.host_link_bandwidth > 0.0 { add(format!("instance{i}.host"), gpu.host_link_bandwidth, gpu.host_link_latency) } else { None });
            let flash = inst.cost().offload().filter(|o| o.tier == Tier::Flash);
            let expert_flash = inst.experts().map(|m| m.config()).filter(|c| c.placement == ExpertTier::Flash);
            flash_link.push(match (flash, expert_flash) {
                (Some(o), _) => add(format!("instance{i}.flash"), o.flash_throughput(), o.flash.as_ref().map_or(0.0, |f| f.latency)),
                (None, Some(c)) => {
                    let f = c.flash.as_ref().expect("validated: flash experts have a drive");
                    add(format!("instance{i}.flash"), f.throughput(c.queue_depth, c.read_chunk_bytes), f.latency)
                }
                (None, None) => None,
            });
        }
        Ok(Transfers { network: Network::new(links)?, host_link, flash_link, kv_out, kv_in, owner: BTreeMap::new(), scheduled: None })
    }

    fn host(&self, instance: u32) -> Result<LinkId> {
        self.host_link[instance as usize].ok_or_else(|| Error::Simulation { message: format!("instance {instance} moves data to or from the host but has no host link") })
    }

    /// Starts moving `bytes` for `instance` over its host link, or from its flash drive and then
    /// the host link; returns whether a flow started (nothing to move: no flow).
    fn start(&mut self, now: Nanos, instance: u32, bytes: u64, from_flash: bool, queue: &mut EventQueue) -> Result<bool> {
        if bytes == 0 {
            return Ok(false);
        }
        let host = self.host(instance)?;
        let path = if from_flash {
            let flash = self.flash_link[instance as usize].ok_or_else(|| Error::Simulation { message: format!("instance {instance} reads flash but has no drive") })?;
            vec![flash, host]
        } else {
            vec![host]
        };
        let id = self.network.start_flow(now, &path, bytes)?;
        self.owner.insert(id, Owner::Instance(instance));
        self.reschedule(queue);
        Ok(true)
    }

    /// Starts moving a request's KV cache (`bytes`) from instance `from` to instance `to`.
    fn start_handoff(&mut self, now: Nanos, req: u32, from: u32, to: u32, bytes: u64, queue: &mut EventQueue) -> Result<()> {
        let id = self.network.start_flow(now, &[self.kv_out[from as usize], self.kv_in[to as usize]], bytes.max(1))?;
        self.owner.insert(id, Owner::Handoff(req));
        self.reschedule(queue);
        Ok(())
    }

    /// Runs the network to `now` if `version` is current; returns the owners of the finished flows.
    fn due(&mut self, now: Nanos, version: u64, queue: &mut EventQueue) -> Result<Vec<Owner>> {
        if version != self.network.version() {
            return Ok(Vec::new());
        }
        let done = self.network.advance(now)?;
        self.scheduled = None;
        self.reschedule(queue);
        Ok(done.iter().map(|r| self.owner.remove(&r.id).expect("every flow has an owner")).collect())
    }

    fn reschedule(&mut self, queue: &mut EventQueue) {
        let v = self.network.version();
        if self.scheduled == Some(v) {
            return;
        }
        if let Some((t, _)) = self.network.next_event() {
            queue.push(t, Event::Network { version: v });
            self.scheduled = Some(v);
        }
    }

    fn utilisation(&self, instance: usize, horizon: Nanos) -> f64 {
        self.host_link[instance].and_then(|l| self.network.link_utilisation(l, horizon)).unwrap_or(0.0)
    }

    fn link_bytes(&self, instance: usize) -> u64 {
        self.host_link[instance].and_then(|l| self.network.link_bytes(l)).unwrap_or(0)
    }
}

/// Where an instance's iteration is: swapping KV first, then computing while (or after) its
/// offloaded weights stream in. It ends when the compute and every stream flow are done.
#[derive(Debug, Clone, Copy)]
struct Pending {
    start: IterationStart,
    since: Nanos,
    swapping: bool,
    flows_left: u32,
    compute_done: bool,
}

/// When an iteration's compute of `compute_ns` started at `now` ends; an error instead of a clock
/// that overflows (an iteration lasting centuries comes from absurd GPU figures or calibration).
fn compute_end(now: Nanos, compute_ns: Nanos, instance: u32) -> Result<Nanos> {
    at(now, compute_ns).ok_or_else(|| Error::Simulation {
        message: format!(
            "simulated time overflow: an iteration of instance {instance} starting at {:.3} s would last {} and end past the {:.0}-year limit of the clock; the pool's GPU figures (peak_flops, memory_bandwidth), calibration or power cap make iterations absurdly long",
            ns_to_secs(now),
            if compute_ns == Nanos::MAX { "forever (its cost is not finite)".to_string() } else { format!("{:.3e} s", ns_to_secs(compute_ns)) },
            ns_to_secs(MAX_TIME_NS) / (365.25 * 86400.0)
        ),
    })
}

/// Drives every instance's iteration through its phases.
struct Iterations {
    pending: Vec<Option<Pending>>,
}

impl Iterations {
    /// Starts `idx`'s next iteration at `now`, if it has work.
    fn begin(&mut self, inst: &mut Instance, idx: u32, now: Nanos, reqs: &mut [Request], queue: &mut EventQueue, net: &mut Transfers) -> Result<()> {
        let started = inst.start_iteration(now, reqs);
        if let Some(e) = inst.take_policy_error() {
            return Err(e);
        }
        let Some(start) = started else { return Ok(()) };
        let swapping = net.start(now, idx, start.transfer_bytes, false, queue)?;
        self.pending[idx as usize] = Some(Pending { start, since: now, swapping, flows_left: 0, compute_done: false });
        if !swapping {
            self.run(idx, now, queue, net)?;
        }
        Ok(())
    }

    /// The compute phase: streams start now; the compute runs under them (overlap) or after them.
    fn run(&mut self, idx: u32, now: Nanos, queue: &mut EventQueue, net: &mut Transfers) -> Result<()> {
        let p = self.pending[idx as usize].as_mut().expect("an iteration is in progress");
        p.since = now;
        let mut overlap = true;
        if let Some(ws) = p.start.stream {
            overlap = ws.overlap;
            p.flows_left = net.start(now, idx, ws.flash_bytes, true, queue)? as u32 + net.start(now, idx, ws.dram_bytes, false, queue)? as u32;
        }
        if overlap || p.flows_left == 0 {
            queue.push(compute_end(now, p.start.compute_ns, idx)?, Event::IterationEnd { instance: idx });
        }
        Ok(())
    }

    /// A flow of `idx` finished at `now`; returns true when the whole iteration is done.
    fn flow_done(&mut self, inst: &mut Instance, idx: u32, now: Nanos, queue: &mut EventQueue, net: &mut Transfers) -> Result<bool> {
        let p = self.pending[idx as usize].as_mut().expect("a flow belongs to an iteration in progress");
        if p.swapping {
            p.swapping = false;
            inst.stats.swap_wait_ns += now - p.since;
            self.run(idx, now, queue, net)?;
            return Ok(false);
        }
        p.flows_left -= 1;
        if p.flows_left > 0 {
            return Ok(false);
        }
        let overlap = p.start.stream.is_some_and(|s| s.overlap);
        if !overlap {
            inst.stats.weight_stall_ns += now - p.since;
            queue.push(compute_end(now, p.start.compute_ns, idx)?, Event::IterationEnd { instance: idx });
            return Ok(false);
        }
        if p.compute_done {
            inst.stats.weight_stall_ns += now - (p.since + p.start.compute_ns);
            self.pending[idx as usize] = None;
            return Ok(true);
        }
        Ok(false)
    }

    /// The compute of `idx` ended; returns true when the whole iteration is done.
    fn compute_done(&mut self, idx: u32) -> bool {
        let p = self.pending[idx as usize].as_mut().expect("compute ends for an iteration in progress");
        if p.flows_left > 0 {
            p.compute_done = true;
            return false;
        }
        self.pending[idx as usize] = None;
        true
    }
}

/// A request on its way from a prefill instance to a decode instance.
#[derive(Debug, Clone, Copy)]
struct Handoff {
    decode: u32,
    blocks: u32,
    prefill_done: bool,
    flow_done: bool,
}

/// Moves prefilled requests to decode instances: picks the least-loaded decode instance that can
/// reserve the request's KV blocks, starts the KV flow, and hands the request over when both the
/// prefill and the flow are done. Requests no decode instance can take yet wait in order.
struct Handoffs {
    decoders: Vec<u32>,
    /// Decode instance a router chose per request, tried first.
    preferred: BTreeMap<u32, u32>,
    state: BTreeMap<u32, Handoff>,
    waiting: std::collections::VecDeque<u32>,
}

impl Handoffs {
    /// Reserves a decode instance for `req` and starts its KV flow; false when none has room.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(&mut self, req: u32, prefill_done: bool, now: Nanos, instances: &mut [Instance], reqs: &mut [Request], net: &mut Transfers, queue: &mut EventQueue) -> Result<bool> {
        let mut order: Vec<u32> = self.decoders.clone();
        order.sort_by_key(|&d| (instances[d as usize].load().outstanding_tokens, d));
        if let Some(p) = self.preferred.remove(&req) {
            order.retain(|&d| d != p);
            order.insert(0, p);
        }
        let r = &reqs[req as usize];
        for d in order {
            if let Some(blocks) = instances[d as usize].reserve(r) {
                let from = r.instance;
                let bytes = r.prompt as u64 * instances[from as usize].cost().model().kv_bytes_per_token(1);
                net.start_handoff(now, req, from, d, bytes, queue)?;
                reqs[req as usize].transfer.0 = now;
                self.state.insert(req, Handoff { decode: d, blocks, prefill_done, flow_done: false });
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The prefill of `req` produced its first token: start (or keep) its transfer.
    fn prefilled(&mut self, req: u32, now: Nanos, instances: &mut [Instance], reqs: &mut [Request], net: &mut Transfers, queue: &mut EventQueue) -> Result<()> {
        if let Some(h) = self.state.get_mut(&req) {
            h.prefill_done = true;
            if h.flow_done {
                self.complete(req, now, instances, reqs, queue);
            }
            return Ok(());
        }
        if !self.dispatch(req, true, now, instances, reqs, net, queue)? {
            self.waiting.push_back(req);
        }
        Ok(())
    }

    /// The KV flow of `req` finished.
    fn flow_done(&mut self, req: u32, now: Nanos, instances: &mut [Instance], reqs: &mut [Request], queue: &mut EventQueue) {
        let h = self.state.get_mut(&req).expect("a handoff flow has a handoff");
        h.flow_done = true;
        if h.prefill_done {
            self.complete(req, now, instances, reqs, queue);
        }
    }

    fn complete(&mut self, req: u32, now: Nanos, instances: &mut [Instance], reqs: &mut [Request], queue: &mut EventQueue) {
        let h = self.state.remove(&req).expect("completing a known handoff");
        let r = &mut reqs[req as usize];
        r.transfer.1 = now;
        let from = r.instance;
        if instances[from as usize].release_handoff(r) {
            queue.push(now, Event::Wake { instance: from });
        }
        r.instance = h.decode;
        if instances[h.decode as usize].accept(req, r, h.blocks) {
            queue.push(now, Event::Wake { instance: h.decode });
        }
    }

    /// Retries waiting handoffs in order while decode instances have room.
    fn retry(&mut self, now: Nanos, instances: &mut [Instance], reqs: &mut [Request], net: &mut Transfers, queue: &mut EventQueue) -> Result<()> {
        while let Some(&req) = self.waiting.front() {
            if !self.dispatch(req, true, now, instances, reqs, net, queue)? {
                break;
            }
            self.waiting.pop_front();
        }
        Ok(())
    }
}

/// Finishes `idx`'s iteration, moves its prefilled requests on, and starts its next iteration.
#[allow(clippy::too_many_arguments)]
fn end_iteration(
    idx: u32,
    now: Nanos,
    instances: &mut [Instance],
    reqs: &mut [Request],
    log: &mut Option<IterationLog>,
    itl: &mut QuantileSketch,
    iterations: &mut Iterations,
    handoffs: &mut Handoffs,
    net: &mut Transfers,
    queue: &mut EventQueue,
) -> Result<()> {
    finish(&mut instances[idx as usize], idx, now, reqs, log, itl);
    for req in instances[idx as usize].take_handoffs() {
        handoffs.prefilled(req, now, instances, reqs, net, queue)?;
    }
    if instances[idx as usize].role == Role::Decode {
        handoffs.retry(now, instances, reqs, net, queue)?;
    }
    iterations.begin(&mut instances[idx as usize], idx, now, reqs, queue, net)?;
    for req in instances[idx as usize].take_early_handoffs() {
        handoffs.dispatch(req, false, now, instances, reqs, net, queue)?;
    }
    Ok(())
}

/// Applies a finished iteration of `inst` at `now` and logs it.
fn finish(inst: &mut Instance, idx: u32, now: Nanos, reqs: &mut [Request], log: &mut Option<IterationLog>, itl: &mut QuantileSketch) {
    if let (Some(l), Some(r)) = (log.as_mut(), inst.take_record(now)) {
        l.push(idx, &r);
    }
    inst.finish_iteration(now, reqs, |t, prev| itl.add((t - prev) as f64 * 1e-9));
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
}

/// Everything a run produces.
pub struct SimOutput {
    /// Final state of every request, in input order.
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
    /// Time of the last event.
    pub end_time: Nanos,
}

fn prefix(path_prefix: &str, e: Error) -> Error {
    match e {
        Error::Config { path, message } => Error::Config { path: format!("{path_prefix}.{path}"), message },
        other => other,
    }
}

/// Lets another thread follow a running simulation and stop it.
#[derive(Debug, Default)]
pub struct Control {
    cancel: AtomicBool,
    arrived: AtomicU64,
}

impl Control {
    /// A control with nothing cancelled and no progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the simulation to stop at its next check (every few thousand events).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Requests that have arrived so far.
    pub fn arrived(&self) -> u64 {
        self.arrived.load(Ordering::Relaxed)
    }
}

/// Runs the simulation of `workload` on the cluster `config` describes.
pub fn simulate(config: &SimConfig, workload: &Workload) -> Result<SimOutput> {
    simulate_with(config, workload, &Control::new())
}

/// [`simulate`], reporting progress to and obeying cancellation from `control`.
pub fn simulate_with(config: &SimConfig, workload: &Workload, control: &Control) -> Result<SimOutput> {
    simulate_plugged(config, workload, control, Plugins::default())
}

/// Builds the planner of one instance (its index in the cluster) of a pool whose scheduler is a
/// user's policy.
pub type PlannerFactory = Box<dyn Fn(usize) -> Result<Box<dyn Planner>> + Send + Sync>;

/// Builds the prefix-cache eviction policy of one instance (its index in the cluster).
pub type EvictorFactory = Box<dyn Fn(usize) -> Result<Box<dyn PrefixEvictor>> + Send + Sync>;

/// Policies supplied as objects rather than configuration (a user's own, e.g. from Python).
#[derive(Default)]
pub struct Plugins {
    /// Replaces the configured router.
    pub router: Option<Box<dyn Router>>,
    /// Per pool index: planners for its instances, run by vLLM v1's scheduling loop within the
    /// pool's configured limits.
    pub planners: BTreeMap<usize, PlannerFactory>,
    /// Per pool index: prefix-cache eviction policies for its instances (pools with prefix caching).
    pub evictors: BTreeMap<usize, EvictorFactory>,
}

/// [`simulate_with`] with `plugins` in place of the configured policies they replace.
pub fn simulate_plugged(config: &SimConfig, workload: &Workload, control: &Control, plugins: Plugins) -> Result<SimOutput> {
    simulate_keeping(config, workload, control, plugins, &mut Vec::new())
}

/// [`simulate_plugged`] that leaves every request's state in `reqs` when the run stops with an
/// error (a policy's failure, a request that never finished), so what finished is kept.
pub fn simulate_keeping(config: &SimConfig, workload: &Workload, control: &Control, mut plugins: Plugins, mut reqs: &mut Vec<Request>) -> Result<SimOutput> {
    let n = workload.arrival.len();
    if workload.prompt.len() != n || workload.output.len() != n {
        return Err(Error::Simulation { message: format!("workload columns differ in length: {n} arrivals, {} prompts, {} outputs", workload.prompt.len(), workload.output.len()) });
    }
    reqs.clear();
    reqs.reserve(n);
    for i in 0..n {
        if i > 0 && workload.arrival[i] < workload.arrival[i - 1] {
            return Err(Error::Simulation { message: format!("arrivals must be sorted: request {i} arrives before request {}", i - 1) });
        }
        if workload.arrival[i] > MAX_TIME_NS {
            return Err(Error::Simulation { message: format!("request {i} arrives at {} ns, past the clock's limit of {MAX_TIME_NS} ns", workload.arrival[i]) });
        }
        if workload.prompt[i] == 0 || workload.output[i] == 0 {
            return Err(Error::Simulation { message: format!("request {i} has zero prompt or output tokens") });
        }
        let mut r = Request::new(workload.arrival[i], workload.prompt[i], workload.output[i]);
        if let Some(h) = workload.hashes.get(i) {
            r.hashes = h.clone();
        }
        reqs.push(r);
    }
    if !workload.hashes.is_empty() && workload.hashes.len() != n {
        return Err(Error::Simulation { message: format!("{} hash lists for {n} requests", workload.hashes.len()) });
    }

    let mut instances = Vec::new();
    let mut pool_names = Vec::new();
    for (p, pool) in config.pools.iter().enumerate() {
        pool_names.push(pool.name.clone());
        if pool.count == 0 {
            return Err(Error::config(format!("cluster.pools.{p}.count"), "must be at least 1"));
        }
        let prefix_tokens = if pool.prefix_caching {
            let tpe = config.hash_block_tokens.ok_or_else(|| Error::config(format!("cluster.pools.{p}.prefix_caching"), "needs a workload with prefix hashes (hash_ids), e.g. a Mooncake trace or prefix groups"))?;
            if tpe == 0 || tpe % pool.memory.block_size != 0 {
                return Err(Error::config(format!("cluster.pools.{p}.memory.block_size"), format!("must divide the workload's {tpe}-token hash blocks for prefix caching")));
            }
            Some(tpe)
        } else {
            None
        };
        for _ in 0..pool.count {
            let experts = pool.experts.as_ref().map(|c| ExpertSetup { config: c, trace: workload.routing.clone(), seed: config.seed, stream: format!("instance{}.experts", instances.len()) });
            let inst = Instance::new(p as u32, &pool.model, &pool.gpu, Parallelism { tp: pool.tp, pp: pool.pp, microbatches: pool.microbatches, gpus_per_node: pool.gpus_per_node, ep: pool.ep }, &pool.calibration, &pool.memory, &pool.scheduler, pool.power_cap_watts, pool.pim.as_ref(), pool.offload.as_ref(), experts).map_err(|e| prefix(&format!("cluster.pools.{p}"), e))?
                .with_prefix_cache(prefix_tokens)
                .with_role(pool.role, pool.kv_transfer == KvTransfer::Layerwise);
            let inst = match plugins.planners.get(&p) {
                Some(make) => inst.with_scheduler(Box::new(pool.scheduler.plan_loop(make(instances.len())?))),
                None => inst,
            };
            let inst = match plugins.evictors.get(&p) {
                Some(make) if prefix_tokens.is_some() => inst.with_prefix_evictor(make(instances.len())?),
                Some(_) => return Err(Error::config(format!("cluster.pools.{p}.prefix_caching"), "a prefix cache policy needs prefix_caching: true and a workload with prefix hashes")),
                None => inst,
            };
            instances.push(inst);
        }
    }
    // Arrivals go to prefill and mixed instances; decode instances only receive handoffs.
    let entry: Vec<usize> = (0..instances.len()).filter(|&i| instances[i].role != Role::Decode).collect();
    let decoders: Vec<u32> = (0..instances.len() as u32).filter(|&i| instances[i as usize].role == Role::Decode).collect();
    let has_prefill = instances.iter().any(|i| i.role == Role::Prefill);
    if entry.is_empty() {
        return Err(Error::config("cluster.pools", "every pool has role decode: some pool must take arrivals (role prefill or mixed)"));
    }
    if has_prefill && decoders.is_empty() {
        return Err(Error::config("cluster.pools", "a pool has role prefill but none has role decode"));
    }
    let mut handoffs = Handoffs { decoders: decoders.clone(), preferred: BTreeMap::new(), state: BTreeMap::new(), waiting: Default::default() };
    let wants_prefix = config.router.uses_prefixes() || plugins.router.is_some();
    let mut router = match plugins.router.take() {
        Some(r) => r,
        None => config.router.build(config.seed, entry.len())?,
    };
    let mut decode_loads: Vec<InstanceLoad> = vec![InstanceLoad::default(); decoders.len()];

    let mut queue = EventQueue::new();
    let mut itl = QuantileSketch::new(0.005);
    let mut log = if config.record_iterations { Some(IterationLog::default()) } else { None };
    let mut loads: Vec<InstanceLoad> = vec![InstanceLoad::default(); entry.len()];
    let mut rejections = Vec::new();
    let mut next_arrival = 0usize;
    let mut events = 0u64;
    let mut now: Nanos = 0;

    let mut transfers = Transfers::new(&instances, &config.pools)?;
    let mut iterations = Iterations { pending: vec![None; instances.len()] };
    loop {
        events += 1;
        if events.is_multiple_of(4096) {
            control.arrived.store(next_arrival as u64, Ordering::Relaxed);
            if control.cancel.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
        }
        let arrival_first = next_arrival < n && queue.peek_time().is_none_or(|t| workload.arrival[next_arrival] <= t);
        if arrival_first {
            let idx = next_arrival;
            next_arrival += 1;
            now = workload.arrival[idx];
            for (l, &i) in loads.iter_mut().zip(entry.iter()) {
                *l = instances[i].load();
                if wants_prefix {
                    l.cached_prefix_tokens = instances[i].cached_prefix_tokens(&reqs[next_arrival - 1].hashes);
                }
            }
            for (l, &d) in decode_loads.iter_mut().zip(decoders.iter()) {
                *l = instances[d as usize].load();
            }
            let (pick, decode_pick) = router.route_pair(&reqs[idx], &loads, &decode_loads)?;
            if pick >= entry.len() || decode_pick.is_some_and(|d| d >= decoders.len()) {
                return Err(Error::Policy { message: format!("router chose entry {pick} / decode {decode_pick:?} for request {idx}, out of {} entry and {} decode instances", entry.len(), decoders.len()) });
            }
            if let Some(d) = decode_pick {
                handoffs.preferred.insert(idx as u32, decoders[d]);
            }
            let target = entry[pick];
            let fits_decode = instances[target].role != Role::Prefill || decoders.iter().any(|&d| instances[d as usize].could_hold(reqs[idx].peak_kv_tokens()));
            let inst = &mut instances[target];
            let req = &mut reqs[idx];
            req.instance = target as u32;
            let reason = inst.reject_reason(req).or_else(|| (!fits_decode).then(|| "no decode instance can ever hold its KV cache".to_string()));
            if let Some(reason) = reason {
                req.status = Status::Rejected;
                inst.stats.rejected += 1;
                rejections.push((idx as u32, reason));
                continue;
            }
            if inst.enqueue(idx as u32, req) {
                queue.push(now, Event::Wake { instance: target as u32 });
            }
            continue;
        }
        let Some((t, ev)) = queue.pop() else {
            events -= 1;
            break;
        };
        if t > MAX_TIME_NS {
            return Err(Error::Simulation { message: format!("simulated time overflow: a transfer would end past the {:.0}-year limit of the clock (at {:.3} s its rate is too low); check the links' bandwidths", ns_to_secs(MAX_TIME_NS) / (365.25 * 86400.0), ns_to_secs(now)) });
        }
        now = t;
        match ev {
            Event::Wake { instance } => {
                let inst = &mut instances[instance as usize];
                inst.woken();
                if !inst.is_busy() {
                    iterations.begin(inst, instance, now, &mut reqs, &mut queue, &mut transfers)?;
                    for req in inst.take_early_handoffs() {
                        handoffs.dispatch(req, false, now, &mut instances, &mut reqs, &mut transfers, &mut queue)?;
                    }
                }
            }
            Event::IterationEnd { instance } => {
                if iterations.compute_done(instance) {
                    end_iteration(instance, now, &mut instances, &mut reqs, &mut log, &mut itl, &mut iterations, &mut handoffs, &mut transfers, &mut queue)?;
                }
            }
            Event::Network { version } => {
                for owner in transfers.due(now, version, &mut queue)? {
                    match owner {
                        Owner::Instance(instance) => {
                            if iterations.flow_done(&mut instances[instance as usize], instance, now, &mut queue, &mut transfers)? {
                                end_iteration(instance, now, &mut instances, &mut reqs, &mut log, &mut itl, &mut iterations, &mut handoffs, &mut transfers, &mut queue)?;
                            }
                        }
                        Owner::Handoff(req) => handoffs.flow_done(req, now, &mut instances, &mut reqs, &mut queue),
                    }
                }
            }
        }
    }

    for inst in instances.iter_mut() {
        if let Some(e) = inst.take_policy_error() {
            return Err(e);
        }
    }
    if let Some((i, r)) = reqs.iter().enumerate().find(|(_, r)| !matches!(r.status, Status::Finished | Status::Rejected)) {
        return Err(Error::Simulation { message: format!("request {i} never finished (status {:?}, {} of {} tokens generated)", r.status, r.generated, r.output) });
    }
    let reports = instances
        .iter()
        .enumerate()
        .map(|(i, inst)| InstanceReport {
            host_link_bytes: transfers.link_bytes(i),
            prefix_hit_tokens: inst.prefix_stats().0,
            prefix_lookup_tokens: inst.prefix_stats().1,
            host_link_utilisation: transfers.utilisation(i, now),
            pool: inst.pool,
            pool_name: pool_names[inst.pool as usize].clone(),
            memory: inst.plan().clone(),
            gpus: inst.cost().gpus(),
            nodes: inst.cost().nodes(),
            energy_joules: inst.energy_joules(now),
            stats: InstanceStats { experts: inst.experts().map(|m| m.stats.clone()), ..inst.stats.clone() },
        })
        .collect();
    Ok(SimOutput { requests: std::mem::take(reqs), rejections, itl, instances: reports, iterations: log, events, end_time: now })
}
