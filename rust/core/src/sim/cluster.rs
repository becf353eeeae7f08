//! The state of a running simulation — instances, requests, transfers, handoffs, router, log —
//! and how each kind of event changes it.

use crate::error::{Error, Result};
use crate::event::{EventQueue, Process};
use crate::instance::{pipeline_mode, ExpertSetup, Instance, InstanceSetup};
use crate::cost::InstanceSpec;
use crate::moe::PluggedCaches;
use crate::request::Request;
use crate::sketch::QuantileSketch;
use crate::time::Nanos;

use super::arrivals::Arrivals;
use super::config::{KvTransfer, SimConfig, Workload, MAX_KV_TRANSFER_LATENCY};
use super::disaggregation::{FewestOutstandingTokens, Handoffs, SenderKv};
use super::iterations::Iterations;
use super::mixed_pool::MixedPool;
use super::plugins::Plugins;
use super::report::IterationLog;
use super::retire::Retirement;
use super::run_ahead::RunAhead;
use super::transfers::{Owner, Transfers};
use super::Role;

/// What happens at an instant. Indices refer to the cluster's instance table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An idle instance has work and should start an iteration.
    Wake {
        /// The instance.
        instance: u32,
    },
    /// The iteration running on an instance finishes its compute.
    IterationEnd {
        /// The instance.
        instance: u32,
    },
    /// Stage 1 of an asynchronously pipelined instance is free for its next batch.
    StageFree {
        /// The instance.
        instance: u32,
    },
    /// The oldest batch in flight on an asynchronously pipelined instance leaves its last stage.
    BatchDone {
        /// The instance.
        instance: u32,
    },
    /// The network's next internal event is due (stale unless `version` is still current).
    Network {
        /// The network's version when the event was scheduled.
        version: u64,
    },
    /// An instance that runs ahead has its earliest own event due (`run_ahead.rs`).
    Ahead {
        /// The instance.
        instance: u32,
    },
}

/// The event queue of a cluster.
pub(super) type Queue = EventQueue<Event>;

/// Everything a run changes as it goes.
pub(super) struct Cluster<'a> {
    /// Every request of the workload, in input order.
    pub(super) reqs: &'a mut Vec<Request>,
    /// Every instance, pool by pool.
    pub(super) instances: Vec<Instance>,
    /// Name of each pool.
    pub(super) pool_names: Vec<String>,
    /// Arrivals still to come and the router that places them.
    pub(super) arrivals: Arrivals<'a>,
    /// Where each instance's iteration is.
    pub(super) iterations: Iterations,
    /// Requests moving from prefill to decode instances.
    pub(super) handoffs: Handoffs,
    /// The network: host links, flash drives, KV links.
    pub(super) transfers: Transfers,
    /// One row per iteration, when asked for.
    pub(super) log: Option<IterationLog>,
    /// Inter-token latencies, seconds.
    pub(super) itl: QuantileSketch,
    /// Rejection reason per rejected request index.
    pub(super) rejections: Vec<(u32, String)>,
    /// Splitwise's mixed pool, when configured.
    pub(super) mixed_pool: Option<MixedPool>,
    /// The workload (a streaming run writes each request into its slot when it arrives).
    pub(super) workload: &'a Workload,
    /// A streaming run's retirement of finished requests into result columns (`None`: every
    /// request is written before the run and kept).
    pub(super) retirement: Option<Retirement<'a>>,
    /// The time of the last event that was not a rejected arrival: the run ends there (energy,
    /// cost and utilisation count up to the last completion, not up to a late rejection).
    pub(super) last_work: Nanos,
    /// The instances that run ahead between arrivals, and their own events.
    pub(super) ahead: RunAhead,
}

/// Puts `path_prefix.` before the path of a configuration error.
fn prefix(path_prefix: &str, e: Error) -> Error {
    match e {
        Error::Config { path, message } => Error::Config { path: format!("{path_prefix}.{path}"), message },
        other => other,
    }
}

impl<'a> Cluster<'a> {
    /// Builds every instance `config` describes (with `plugins` in place of the policies they
    /// replace) for the requests of `workload`, already in `reqs`.
    pub(super) fn new(config: &SimConfig, workload: &'a Workload, mut plugins: Plugins, reqs: &'a mut Vec<Request>) -> Result<Self> {
        let plugged = plugins.router.is_some() || plugins.decode_choice.is_some() || !plugins.batch_schedulers.is_empty() || !plugins.evictors.is_empty() || !plugins.expert_caches.is_empty();
        let mut instances = Vec::new();
        let mut pool_names = Vec::new();
        let mut layerwise = Vec::new();
        if let Some(p) = workload.given_classes.keys().find(|&&p| p >= config.pools.len()) {
            return Err(Error::config("workload.acceptance_class", format!("classes given for pool {p}, of {} pools", config.pools.len())));
        }
        for (p, pool) in config.pools.iter().enumerate() {
            pool_names.push(pool.name.clone());
            if pool.count == 0 {
                return Err(Error::config(format!("cluster.pools.{p}.count"), "must be at least 1"));
            }
            if !(0.0..=MAX_KV_TRANSFER_LATENCY).contains(&pool.kv_transfer_latency) {
                return Err(Error::config(format!("cluster.pools.{p}.kv_transfer_latency"), format!("must be between 0 and {MAX_KV_TRANSFER_LATENCY} s, got {:?}", pool.kv_transfer_latency)));
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
            let given_classes = workload.given_classes.get(&p).cloned();
            if given_classes.as_ref().is_some_and(|g| g.len() != workload.arrival.len()) {
                return Err(Error::config("workload.acceptance_class", format!("pool {p}'s classes give {} requests, the workload has {}", given_classes.map_or(0, |g| g.len()), workload.arrival.len())));
            }
            let first_of_pool = instances.len();
            for _ in 0..pool.count {
                let spec = InstanceSpec {
                    model: pool.model.clone(),
                    gpu: pool.gpu.clone(),
                    efficiency: pool.calibration.clone(),
                    tp: pool.parallelism.tp,
                    pp: pool.parallelism.pp,
                    microbatches: pool.parallelism.microbatches,
                    ep: pool.parallelism.ep,
                    gpus_per_node: pool.parallelism.gpus_per_node,
                    pim: pool.pim.clone(),
                    offload: pool.offload.clone(),
                    power_cap_watts: pool.power_cap_watts,
                    quantization: pool.quantization,
                };
                let index = instances.len();
                let plugged_caches = plugins.expert_caches.get(&p).map(|make| move |site| make(index, site));
                let caches = plugged_caches.as_ref().map(|f| f as &PluggedCaches);
                let experts = pool.experts.as_ref().map(|c| ExpertSetup { config: c, trace: workload.routing.clone(), seed: config.seed, stream: format!("instance{index}.experts"), caches });
                let spec_stream = format!("instance{index}.speculative");
                let setup = InstanceSetup { pool: p as u32, spec: spec.clone(), memory: &pool.memory, scheduler: &pool.scheduler, experts };
                let mode = pipeline_mode(pool.parallelism.pipeline, pool.parallelism.pp, pool.parallelism.microbatches, &pool.needs_sync_pipeline()).map_err(|e| prefix(&format!("cluster.pools.{p}"), e))?;
                let inst = Instance::new(setup)
                    .and_then(|i| i.with_speculation(pool.speculative.as_ref(), &spec, config.seed, &spec_stream))
                    .and_then(|i| i.with_given_classes(given_classes.clone()))
                    .map_err(|e| prefix(&format!("cluster.pools.{p}"), e))?
                    .with_prefix_cache(prefix_tokens).with_role(pool.role).with_pipelining(mode);
                let inst = match plugins.batch_schedulers.get(&p) {
                    Some(make) => inst.with_scheduler(Box::new(pool.scheduler.vllm_v1_loop(make(instances.len())?, pool.model.max_position_embeddings))),
                    None => inst,
                };
                let inst = match plugins.evictors.get(&p) {
                    Some(make) if prefix_tokens.is_some() => inst.with_prefix_evictor(make(instances.len())?),
                    Some(_) => return Err(Error::config(format!("cluster.pools.{p}.prefix_caching"), "a prefix cache policy needs prefix_caching: true and a workload with prefix hashes")),
                    None => inst,
                };
                let mut inst = inst;
                if let Some(first) = instances.get(first_of_pool) {
                    // One cost model and decode memo for the pool: a large pool keeps them hot.
                    inst.share_cost_of(first);
                }
                layerwise.push(pool.kv_transfer == KvTransfer::Layerwise && pool.role == Role::Prefill);
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
        let choice = plugins.decode_choice.take().unwrap_or_else(|| Box::new(FewestOutstandingTokens));
        let handoffs = Handoffs::new(decoders.clone(), choice, layerwise, instances.iter().map(SenderKv::of).collect());
        let wants_prefix = config.router.uses_prefixes() || plugins.router.is_some();
        let router = match plugins.router.take() {
            Some(r) => r,
            None => config.router.build(config.seed, entry.len())?,
        };
        let arrivals = Arrivals::new(&workload.arrival, router, wants_prefix, entry, decoders, instances.len());
        let log = if config.record_iterations { Some(IterationLog::default()) } else { None };
        let transfers = Transfers::new(&instances, &config.pools)?;
        let iterations = Iterations::new(instances.len());
        let roles: Vec<Role> = instances.iter().map(|i| i.role).collect();
        let mixed_pool = config.mixed_pool.as_ref().map(|m| MixedPool::new(m, &roles, workload.arrival.len())).transpose()?;
        // Instances run ahead between arrivals where nothing else interleaves with their events
        // (`run_ahead.rs`): mixed roles starting no network flow, no log, mixed pool or plugged policy.
        let watched = log.is_some() || mixed_pool.is_some() || plugged;
        let ahead = RunAhead::new(instances.iter().map(|i| !watched && i.role == Role::Mixed && config.pools[i.pool as usize].needs_sync_pipeline().is_empty()));
        Ok(Cluster { reqs, instances, pool_names, arrivals, iterations, handoffs, transfers, log, itl: QuantileSketch::new(0.005), rejections: Vec::new(), mixed_pool, workload, retirement: None, last_work: 0, ahead })
    }

    /// In a streaming run, retires the leading finished requests (after every event).
    pub(super) fn retire_finished(&mut self) {
        if let Some(r) = self.retirement.as_mut() {
            r.retire(self.reqs, self.arrivals.arrived());
        }
    }

    /// The run stops with `e`: for a policy's or the simulation's error, a streaming run writes
    /// every request's state into its columns (what finished is kept).
    pub(super) fn stopped_by(&mut self, e: &Error) {
        if let (Some(r), Error::Policy { .. } | Error::Simulation { .. }) = (self.retirement.as_mut(), e) {
            r.stop(self.reqs, self.arrivals.arrived());
        }
    }

    /// An idle instance was told it has work: it starts an iteration if it is not running one.
    pub(super) fn wake(&mut self, instance: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        self.instances[instance as usize].woken();
        if !self.instances[instance as usize].is_busy() {
            self.begin_iteration(instance, now, queue)?;
        }
        Ok(())
    }
}

impl Process<Event> for Cluster<'_> {
    fn next_external(&self) -> Option<Nanos> {
        self.arrivals.next_time()
    }

    fn external(&mut self, now: Nanos, queue: &mut Queue) -> Result<()> {
        let rejected = self.rejections.len();
        self.arrive(now, queue)?;
        if self.rejections.len() == rejected {
            self.last_work = self.last_work.max(now);
        }
        Ok(())
    }

    /// Handles `event`, then refreshes the routers' load index for the instance it concerns (an
    /// instance's outstanding tokens change only in its own events, its arrivals and the handoffs
    /// it receives; debug builds check the whole index against the instances at every arrival).
    fn handle(&mut self, now: Nanos, event: Event, queue: &mut Queue) -> Result<()> {
        if !matches!(event, Event::Ahead { .. }) {
            // Instances that ran ahead may have worked past `now`.
            self.last_work = self.last_work.max(now);
        }
        match event {
            Event::Wake { instance } => {
                self.wake(instance, now, queue)?;
                self.note_load(instance);
            }
            Event::IterationEnd { instance } => {
                if self.iterations.compute_done(instance, now, &mut self.ahead, queue)? {
                    self.end_iteration(instance, now, queue)?;
                    self.note_load(instance);
                }
            }
            Event::StageFree { instance } => {
                self.stage1_free(instance, now, queue)?;
                self.note_load(instance);
            }
            Event::BatchDone { instance } => {
                self.batch_done(instance, now, queue)?;
                self.note_load(instance);
            }
            Event::Ahead { instance } => self.run_ahead(instance, now, queue)?,
            Event::Network { version } => {
                for owner in self.transfers.due(now, version, queue)? {
                    match owner {
                        Owner::Instance(instance) => {
                            if self.iteration_flow_done(instance, now, queue)? {
                                self.end_iteration(instance, now, queue)?;
                                self.note_load(instance);
                            }
                        }
                        Owner::Handoff(req) => {
                            self.handoff_flow_done(req, now, queue)?;
                            self.note_load(self.reqs[req as usize].instance);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
