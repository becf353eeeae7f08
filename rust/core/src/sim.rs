//! The discrete-event simulation of a cluster: arrivals, routing, iterations, completions.
//!
//! Arrivals come from a time-sorted table and are merged with the event heap; at equal times an
//! arrival runs before any heap event, exactly as if every arrival had been pushed onto the heap
//! before the run (so with the lowest sequence numbers). An arrival is routed at once; an idle
//! instance that receives work gets a `Wake` event at the same instant, which runs after every
//! other arrival of that instant, so simultaneous arrivals share the first iteration. When an
//! iteration ends its tokens are applied and the next iteration starts at the same instant.
//! An iteration that swaps KV first moves the bytes as a flow over the instance's host link (in
//! the shared [`Network`]); its compute starts when the flow completes.

use crate::calibration::Efficiency;
use crate::error::{Error, Result};
use crate::event::{Event, EventQueue};
use crate::hardware::{GpuSpec, PimSpec};
use crate::offload::OffloadSpec;
use crate::instance::{Instance, InstanceStats, IterationRecord, Parallelism};
use crate::network::{FlowId, LinkId, LinkSpec, Network};
use std::collections::BTreeMap;
use crate::memory::{MemoryConfig, MemoryPlan};
use crate::model::ModelSpec;
use crate::request::{Request, Status};
use crate::router::{InstanceLoad, RouterConfig};
use crate::scheduler::SchedulerConfig;
use crate::sketch::QuantileSketch;
use crate::time::Nanos;
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

/// The transfers of a run: each instance's host link in one shared network, and which instance
/// each flow belongs to.
struct Transfers {
    network: Network,
    host_link: Vec<Option<LinkId>>,
    owner: BTreeMap<FlowId, u32>,
    scheduled: Option<u64>,
}

impl Transfers {
    fn new(instances: &[Instance], pools: &[PoolConfig]) -> Result<Self> {
        let mut links = Vec::new();
        let mut host_link = Vec::with_capacity(instances.len());
        for (i, inst) in instances.iter().enumerate() {
            let gpu = &pools[inst.pool as usize].gpu;
            if gpu.host_link_bandwidth > 0.0 {
                host_link.push(Some(links.len() as LinkId));
                links.push(LinkSpec { name: format!("instance{i}.host"), bandwidth: gpu.host_link_bandwidth, latency: gpu.host_link_latency });
            } else {
                host_link.push(None);
            }
        }
        Ok(Transfers { network: Network::new(links)?, host_link, owner: BTreeMap::new(), scheduled: None })
    }

    /// Starts moving `bytes` over `instance`'s host link.
    fn start(&mut self, now: Nanos, instance: u32, bytes: u64, queue: &mut EventQueue) -> Result<()> {
        let link = self.host_link[instance as usize].ok_or_else(|| Error::Simulation { message: format!("instance {instance} swaps but has no host link") })?;
        let id = self.network.start_flow(now, &[link], bytes)?;
        self.owner.insert(id, instance);
        self.reschedule(queue);
        Ok(())
    }

    /// Runs the network to `now` if `version` is current; returns the finished (instance, flow)s.
    fn due(&mut self, now: Nanos, version: u64, queue: &mut EventQueue) -> Result<Vec<(u32, FlowId)>> {
        if version != self.network.version() {
            return Ok(Vec::new());
        }
        let done = self.network.advance(now)?;
        self.scheduled = None;
        self.reschedule(queue);
        Ok(done.iter().map(|r| (self.owner.remove(&r.id).expect("every flow has an owner"), r.id)).collect())
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

/// Starts `inst`'s next iteration at `now`, through a swap transfer when the batch has one.
fn begin(inst: &mut Instance, idx: u32, now: Nanos, reqs: &mut [Request], queue: &mut EventQueue, transfers: &mut Transfers) -> Result<()> {
    if let Some(start) = inst.start_iteration(now, reqs) {
        if start.transfer_bytes > 0 {
            transfers.start(now, idx, start.transfer_bytes, queue)?;
        } else {
            queue.push(now + start.compute_ns, Event::IterationEnd { instance: idx });
        }
    }
    Ok(())
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

/// Runs the simulation of `workload` on the cluster `config` describes.
pub fn simulate(config: &SimConfig, workload: &Workload) -> Result<SimOutput> {
    let n = workload.arrival.len();
    if workload.prompt.len() != n || workload.output.len() != n {
        return Err(Error::Simulation { message: format!("workload columns differ in length: {n} arrivals, {} prompts, {} outputs", workload.prompt.len(), workload.output.len()) });
    }
    let mut reqs = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 && workload.arrival[i] < workload.arrival[i - 1] {
            return Err(Error::Simulation { message: format!("arrivals must be sorted: request {i} arrives before request {}", i - 1) });
        }
        if workload.prompt[i] == 0 || workload.output[i] == 0 {
            return Err(Error::Simulation { message: format!("request {i} has zero prompt or output tokens") });
        }
        reqs.push(Request::new(workload.arrival[i], workload.prompt[i], workload.output[i]));
    }

    let mut instances = Vec::new();
    let mut pool_names = Vec::new();
    for (p, pool) in config.pools.iter().enumerate() {
        pool_names.push(pool.name.clone());
        if pool.count == 0 {
            return Err(Error::config(format!("cluster.pools.{p}.count"), "must be at least 1"));
        }
        for _ in 0..pool.count {
            let inst = Instance::new(p as u32, &pool.model, &pool.gpu, Parallelism { tp: pool.tp, pp: pool.pp, microbatches: pool.microbatches, gpus_per_node: pool.gpus_per_node }, &pool.calibration, &pool.memory, &pool.scheduler, pool.power_cap_watts, pool.pim.as_ref(), pool.offload.as_ref()).map_err(|e| prefix(&format!("cluster.pools.{p}"), e))?;
            instances.push(inst);
        }
    }
    let mut router = config.router.build(config.seed, instances.len())?;

    let mut queue = EventQueue::new();
    let mut itl = QuantileSketch::new(0.005);
    let mut log = if config.record_iterations { Some(IterationLog::default()) } else { None };
    let mut loads: Vec<InstanceLoad> = vec![InstanceLoad::default(); instances.len()];
    let mut rejections = Vec::new();
    let mut next_arrival = 0usize;
    let mut events = 0u64;
    let mut now: Nanos = 0;

    let mut transfers = Transfers::new(&instances, &config.pools)?;
    loop {
        events += 1;
        let arrival_first = next_arrival < n && queue.peek_time().is_none_or(|t| workload.arrival[next_arrival] <= t);
        if arrival_first {
            let idx = next_arrival;
            next_arrival += 1;
            now = workload.arrival[idx];
            for (l, inst) in loads.iter_mut().zip(instances.iter()) {
                *l = inst.load();
            }
            let target = router.route(&reqs[idx], &loads);
            let inst = &mut instances[target];
            let req = &mut reqs[idx];
            req.instance = target as u32;
            if let Some(reason) = inst.reject_reason(req) {
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
        now = t;
        match ev {
            Event::Wake { instance } => {
                let inst = &mut instances[instance as usize];
                inst.woken();
                if !inst.is_busy() {
                    begin(inst, instance, now, &mut reqs, &mut queue, &mut transfers)?;
                }
            }
            Event::IterationEnd { instance } => {
                let inst = &mut instances[instance as usize];
                if let (Some(l), Some(r)) = (log.as_mut(), inst.take_record(now)) {
                    l.push(instance, &r);
                }
                inst.finish_iteration(now, &mut reqs, |t, prev| itl.add((t - prev) as f64 * 1e-9));
                begin(inst, instance, now, &mut reqs, &mut queue, &mut transfers)?;
            }
            Event::Network { version } => {
                for (instance, _) in transfers.due(now, version, &mut queue)? {
                    let end = instances[instance as usize].transfer_done(now);
                    queue.push(end, Event::IterationEnd { instance });
                }
            }
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
            host_link_utilisation: transfers.utilisation(i, now),
            pool: inst.pool,
            pool_name: pool_names[inst.pool as usize].clone(),
            memory: inst.plan().clone(),
            gpus: inst.cost().gpus(),
            nodes: inst.cost().nodes(),
            energy_joules: inst.energy_joules(now),
            stats: inst.stats.clone(),
        })
        .collect();
    Ok(SimOutput { requests: reqs, rejections, itl, instances: reports, iterations: log, events, end_time: now })
}
