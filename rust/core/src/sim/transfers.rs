//! The network of a run: each instance's host link (and flash drive, with flash offload) and KV
//! links in one shared [`Network`], and whose each flow is.

use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::moe::ExpertTier;
use crate::network::{FlowId, LinkId, LinkSpec, Network};
use crate::offload::Tier;
use crate::time::Nanos;
use std::collections::BTreeMap;

use super::cluster::{Event, Queue};
use super::config::{KvLink, PoolConfig};

/// The transfers of a run: each instance's host link (and flash drive, with flash offload) in one
/// shared network, and which instance each flow belongs to.
pub(super) struct Transfers {
    network: Network,
    host_link: Vec<Option<LinkId>>,
    flash_link: Vec<Option<LinkId>>,
    kv_out: Vec<LinkId>,
    /// Each instance's KV ingress links: `[NIC, NVLink]`, the one a flow enters by chosen by its
    /// sender's `kv_link`.
    kv_in: Vec<[LinkId; 2]>,
    /// Each instance's pool's `kv_link`: the links the KV it sends leaves and enters by.
    kv_link: Vec<KvLink>,
    owner: BTreeMap<FlowId, Owner>,
    scheduled: Option<u64>,
}

/// Whose a flow is: an instance's iteration (swap, weight stream) or a request's KV handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// An iteration of this instance (a swap or a weight stream).
    Instance(u32),
    /// The KV handoff of this request.
    Handoff(u32),
}

impl Transfers {
    /// One host link (and flash drive) per instance that has one, and KV links in and out of each.
    pub(super) fn new(instances: &[Instance], pools: &[PoolConfig]) -> Result<Self> {
        let mut links = Vec::new();
        let mut host_link = Vec::with_capacity(instances.len());
        let mut flash_link = Vec::with_capacity(instances.len());
        let mut kv_out = Vec::with_capacity(instances.len());
        let mut kv_in = Vec::with_capacity(instances.len());
        let mut kv_link = Vec::with_capacity(instances.len());
        for (i, inst) in instances.iter().enumerate() {
            let pool = &pools[inst.pool as usize];
            let gpu = &pool.gpu;
            let gpus = inst.cost().gpus() as f64;
            let link = |kind: KvLink| match kind {
                KvLink::Nvlink => (gpu.link_bandwidth, gpu.link_latency),
                KvLink::Nic if gpu.nic_bandwidth > 0.0 => (gpu.nic_bandwidth, gpu.nic_latency),
                KvLink::Nic => (gpu.host_link_bandwidth.max(gpu.link_bandwidth), gpu.host_link_latency),
            };
            let (bw, lat) = link(pool.kv_link);
            // Every GPU of the instance sends (or receives) its shard in parallel.
            // A KV flow leaving it pays the link's latency and the transfer's setup/synchronisation.
            links.push(LinkSpec { name: format!("instance{i}.kv_out"), bandwidth: bw * gpus, latency: lat + pool.kv_transfer_latency });
            kv_out.push((links.len() - 1) as LinkId);
            kv_link.push(pool.kv_link);
            // A flow enters by the kind of link it left by (the sender's `kv_link`): NVLink
            // end to end between instances on one node, the NICs otherwise.
            let mut ingress = [0 as LinkId; 2];
            for (slot, kind, name) in [(0, KvLink::Nic, "kv_in"), (1, KvLink::Nvlink, "kv_in_nvlink")] {
                links.push(LinkSpec { name: format!("instance{i}.{name}"), bandwidth: link(kind).0 * gpus, latency: 0.0 });
                ingress[slot] = (links.len() - 1) as LinkId;
            }
            kv_in.push(ingress);
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
                    add(format!("instance{i}.flash"), f.throughput(c.queue_depth, c.read_chunk_bytes()), f.latency)
                }
                (None, None) => None,
            });
        }
        Ok(Transfers { network: Network::new(links)?, host_link, flash_link, kv_out, kv_in, kv_link, owner: BTreeMap::new(), scheduled: None })
    }

    /// `instance`'s host link; an error when its GPU has none.
    fn host(&self, instance: u32) -> Result<LinkId> {
        self.host_link[instance as usize].ok_or_else(|| Error::Simulation { message: format!("instance {instance} moves data to or from the host but has no host link") })
    }

    /// Starts moving `bytes` for `instance` over its host link, or from its flash drive and then
    /// the host link; returns whether a flow started (nothing to move: no flow).
    pub(super) fn start(&mut self, now: Nanos, instance: u32, bytes: u64, from_flash: bool, queue: &mut Queue) -> Result<bool> {
        if bytes == 0 {
            return Ok(false);
        }
        let host = self.host(instance)?;
        let (flash_host, host_only);
        let path: &[LinkId] = if from_flash {
            let flash = self.flash_link[instance as usize].ok_or_else(|| Error::Simulation { message: format!("instance {instance} reads flash but has no drive") })?;
            flash_host = [flash, host];
            &flash_host
        } else {
            host_only = [host];
            &host_only
        };
        let id = self.network.start_flow(now, path, bytes)?;
        self.owner.insert(id, Owner::Instance(instance));
        self.reschedule(queue);
        Ok(true)
    }

    /// Starts moving a request's KV cache (`bytes`) from instance `from` to instance `to`, over
    /// the kind of link `from`'s pool names (`kv_link`) at both ends.
    pub(super) fn start_handoff(&mut self, now: Nanos, req: u32, from: u32, to: u32, bytes: u64, queue: &mut Queue) -> Result<()> {
        let ingress = self.kv_in[to as usize][match self.kv_link[from as usize] {
            KvLink::Nic => 0,
            KvLink::Nvlink => 1,
        }];
        let id = self.network.start_flow(now, &[self.kv_out[from as usize], ingress], bytes.max(1))?;
        self.owner.insert(id, Owner::Handoff(req));
        self.reschedule(queue);
        Ok(())
    }

    /// Runs the network to `now` if `version` is current; returns the owners of the finished flows.
    pub(super) fn due(&mut self, now: Nanos, version: u64, queue: &mut Queue) -> Result<Vec<Owner>> {
        if version != self.network.version() {
            return Ok(Vec::new());
        }
        let done = self.network.advance(now)?;
        self.scheduled = None;
        self.reschedule(queue);
        Ok(done.iter().map(|r| self.owner.remove(&r.id).expect("every flow has an owner")).collect())
    }

    /// Queues a network event for the network's next internal event, once per network version.
    fn reschedule(&mut self, queue: &mut Queue) {
        let v = self.network.version();
        if self.scheduled == Some(v) {
            return;
        }
        if let Some((t, _)) = self.network.next_event() {
            queue.push(t, Event::Network { version: v });
            self.scheduled = Some(v);
        }
    }

    /// Fraction of `instance`'s host link capacity used over `[0, horizon]`.
    pub(super) fn utilisation(&self, instance: usize, horizon: Nanos) -> f64 {
        self.host_link[instance].and_then(|l| self.network.link_utilisation(l, horizon)).unwrap_or(0.0)
    }

    /// Bytes `instance`'s host link carried.
    pub(super) fn link_bytes(&self, instance: usize) -> u64 {
        self.host_link[instance].and_then(|l| self.network.link_bytes(l)).unwrap_or(0)
    }
}

