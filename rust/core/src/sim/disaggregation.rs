//! Disaggregated serving (Splitwise, DistServe): instance roles, and the handoff of prefilled
//! requests — their KV cache moves over the network — from prefill to decode instances, either
//! after the prefill (serialized) or layer by layer while it runs (layer-wise).
//!
//! A layer-wise transfer is two flows: all layers but the last from the start of the prefill
//! iteration that completes the prompt (overlapping it), then the last layer's KV once both the
//! prefill and that first flow are done (with a speculating prefill instance's proposer KV, which
//! exists once the proposer has run after the target). What shows after the prompt is thus the last layer over
//! the link, every flow's setup/synchronisation latency (`kv_transfer_latency`, a latency phase
//! of the KV link), and whatever of the first flow the prefill did not cover (a link slower than
//! the prefill). Approximation: the first flow may run ahead of the layers the prefill has
//! produced (at most the first layer's compute time, which is not charged).

use crate::error::{Error, Result};
use crate::request::Request;
use crate::router::InstanceLoad;
use crate::time::Nanos;
use std::collections::{BTreeMap, VecDeque};

use super::cluster::{Cluster, Event, Queue};

/// What an instance does in a disaggregated cluster (Splitwise, DistServe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Prefills and decodes its requests (a colocated instance; Splitwise's mixed pool, machines
    /// lent between prefill and decode pools under overload, is `SimConfig::mixed_pool`).
    #[default]
    Mixed,
    /// Prefills only: after the first token the request's KV moves to a decode instance.
    Prefill,
    /// Decodes requests prefilled elsewhere; receives no arrivals.
    Decode,
}

/// Chooses where a prefilled request's KV goes: the decode instances to try, best first (the
/// first that can reserve the request's blocks takes it; when none can, the request waits and is
/// offered again when a decode instance frees room). The built-in is [`FewestOutstandingTokens`];
/// a user's own (a Python policy) is plugged in through `Plugins::decode_choice`.
pub trait DecodeChoice: Send + Sync {
    /// The decode instances (cluster indices from `decoders`, whose loads are `loads`) to try for
    /// request `index` (`req`), best first; `preferred` is the one the router chose, if it did.
    /// A decode instance's `outstanding_tokens` here include the KV tokens of handoffs already in
    /// flight to it (reserved there when their transfer started, not yet running there).
    /// Every instance named must be one of `decoders`; an error stops the simulation.
    fn candidates(&mut self, index: u32, req: &Request, decoders: &[u32], loads: &[InstanceLoad], preferred: Option<u32>) -> Result<Vec<u32>>;
}

/// The default choice: the router's pick first, then the fewest outstanding tokens (lowest index
/// on ties), counting the KV of transfers in flight to each decode instance (the decode side
/// reserves it when the transfer starts, as in Splitwise, DistServe and llm-d), so simultaneous
/// handoffs spread over the decode instances instead of all picking the same least-loaded one.
#[derive(Debug, Clone, Copy, Default)]
pub struct FewestOutstandingTokens;

impl DecodeChoice for FewestOutstandingTokens {
    fn candidates(&mut self, _index: u32, _req: &Request, decoders: &[u32], loads: &[InstanceLoad], preferred: Option<u32>) -> Result<Vec<u32>> {
        let mut order: Vec<(u64, u32)> = decoders.iter().zip(loads).map(|(&d, l)| (l.outstanding_tokens, d)).collect();
        order.sort_unstable();
        let mut order: Vec<u32> = order.into_iter().map(|(_, d)| d).collect();
        if let Some(p) = preferred {
            order.retain(|&d| d != p);
            order.insert(0, p);
        }
        Ok(order)
    }
}

/// A request on its way from a prefill instance to a decode instance.
#[derive(Debug, Clone, Copy)]
struct Handoff {
    decode: u32,
    blocks: u32,
    /// KV tokens counted in the decode instance's in-flight load until the handoff completes.
    tokens: u64,
    prefill_done: bool,
    flow_done: bool,
    /// Where the last layer's KV of a layer-wise transfer still has to go: the route and bytes.
    tail: Option<(u32, u32, u64)>,
}

/// What an instance's prefills send per prompt token, fixed for the run.
#[derive(Debug, Clone, Copy)]
pub(super) struct SenderKv {
    /// The model's KV bytes per token, all layers.
    pub(super) target_bytes_per_token: u64,
    /// A speculating instance's proposer KV bytes per token (0 without speculation).
    pub(super) proposer_bytes_per_token: u64,
    /// The model's layers (a layer-wise transfer holds back the last one's share).
    pub(super) layers: u64,
}

impl SenderKv {
    /// What `inst`'s prefills send.
    pub(super) fn of(inst: &crate::instance::Instance) -> Self {
        SenderKv {
            target_bytes_per_token: inst.cost().kv_bytes_per_token_whole_model(),
            proposer_bytes_per_token: inst.speculation().map_or(0, |s| s.speculator().proposer_kv_bytes_per_token_whole_model()),
            layers: inst.cost().model().num_layers as u64,
        }
    }
}

/// The handoffs of a run: picks the least-loaded decode instance that can reserve the request's
/// KV blocks, starts the KV flow, and hands the request over when both the prefill and the flow
/// are done. Requests no decode instance can take yet wait in order.
pub(super) struct Handoffs {
    /// Decode instances.
    decoders: Vec<u32>,
    /// Which decode instances a request tries, in order.
    choice: Box<dyn DecodeChoice>,
    /// Per instance: whether it sends KV layer by layer while the prefill runs.
    layerwise: Vec<bool>,
    /// Per instance: what its prefills send per prompt token.
    sender_kv: Vec<SenderKv>,
    /// Decode instance a router chose per request, tried first.
    preferred: BTreeMap<u32, u32>,
    state: BTreeMap<u32, Handoff>,
    waiting: VecDeque<u32>,
    /// Per instance: KV tokens of the handoffs in flight to it (reserved, not yet accepted).
    in_flight_tokens: Vec<u64>,
}

impl Handoffs {
    /// Handoffs to the `decoders` instances in the order `choice` gives; `layerwise` and
    /// `sender_kv` per instance.
    pub(super) fn new(decoders: Vec<u32>, choice: Box<dyn DecodeChoice>, layerwise: Vec<bool>, sender_kv: Vec<SenderKv>) -> Self {
        let in_flight_tokens = vec![0; layerwise.len()];
        Handoffs { decoders, choice, layerwise, sender_kv, preferred: BTreeMap::new(), state: BTreeMap::new(), waiting: VecDeque::new(), in_flight_tokens }
    }

    /// Records the decode instance a router chose for `req`, tried first at its handoff.
    pub(super) fn prefer(&mut self, req: u32, decode: u32) {
        self.preferred.insert(req, decode);
    }
}

impl Cluster<'_> {
    /// Reserves a decode instance for `req` and starts its KV flow; false when none has room.
    fn dispatch_handoff(&mut self, req: u32, prefill_done: bool, now: Nanos, queue: &mut Queue) -> Result<bool> {
        let instances = &mut self.instances;
        let h = &mut self.handoffs;
        let r = &self.reqs[req as usize];
        // A decode instance's load counts the KV already on its way to it.
        let loads: Vec<InstanceLoad> = h
            .decoders
            .iter()
            .map(|&d| {
                let mut l = instances[d as usize].load();
                l.outstanding_tokens += h.in_flight_tokens[d as usize];
                l
            })
            .collect();
        let order = h.choice.candidates(req, r, &h.decoders, &loads, h.preferred.remove(&req))?;
        if let Some(bad) = order.iter().find(|&&d| instances.get(d as usize).is_none_or(|i| i.role != Role::Decode)) {
            return Err(Error::Policy { message: format!("the decode choice named instance {bad} for request {req}; the decode instances are {:?}", h.decoders) });
        }
        for d in order {
            if let Some(blocks) = instances[d as usize].reserve(r) {
                let from = r.instance;
                let kv = h.sender_kv[from as usize];
                let target = r.prompt as u64 * kv.target_bytes_per_token;
                // A speculating prefill instance sends its proposer's KV of the prompt too.
                let proposer = r.prompt as u64 * kv.proposer_bytes_per_token;
                let bytes = target + proposer;
                let tokens = r.known_tokens() as u64;
                // Layer-wise (started before the prefill ends): the last layer's share waits, and
                // the proposer's KV, which exists once the proposer has run after the target.
                let last = if prefill_done { 0 } else if kv.layers < 2 { proposer } else { target / kv.layers + proposer };
                self.transfers.start_handoff(now, req, from, d, bytes - last, queue)?;
                self.reqs[req as usize].transfer.0 = now;
                let tail = (last > 0).then_some((from, d, last));
                h.in_flight_tokens[d as usize] += tokens;
                h.state.insert(req, Handoff { decode: d, blocks, tokens, prefill_done, flow_done: false, tail });
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Layer-wise transfer: the iteration `idx` just started completes some prefills, whose KV
    /// starts moving now, overlapping the iteration.
    pub(super) fn start_layerwise_handoffs(&mut self, idx: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        if !self.handoffs.layerwise[idx as usize] || self.token_pool_overloaded() {
            return Ok(());
        }
        let reqs = &self.reqs;
        let early: Vec<u32> = self.instances[idx as usize]
            .batch()
            .items
            .iter()
            .filter(|it| {
                let r = &reqs[it.req as usize];
                r.generated == 0 && r.computed + it.tokens == r.known_tokens() && r.output > 1
            })
            .map(|it| it.req)
            .collect();
        for req in early {
            // No decode instance has room yet: the handoff is retried when the prefill ends.
            self.dispatch_handoff(req, false, now, queue)?;
        }
        Ok(())
    }

    /// The prefill of `req` produced its first token: start (or keep) its transfer.
    pub(super) fn prefilled(&mut self, req: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        if let Some(h) = self.handoffs.state.get_mut(&req) {
            h.prefill_done = true;
            if h.flow_done {
                self.finish_or_send_tail(req, now, queue)?;
            }
            return Ok(());
        }
        if self.mixed_pool_keeps_decode(req, now, queue) {
            return Ok(());
        }
        if !self.dispatch_handoff(req, true, now, queue)? {
            self.handoffs.waiting.push_back(req);
        }
        Ok(())
    }

    /// A KV flow of `req` finished.
    pub(super) fn handoff_flow_done(&mut self, req: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        let h = self.handoffs.state.get_mut(&req).expect("a handoff flow has a handoff");
        h.flow_done = true;
        if h.prefill_done {
            self.finish_or_send_tail(req, now, queue)?;
        }
        Ok(())
    }

    /// The prefill of `req` and its KV flow are both done: send the last layer's KV of a
    /// layer-wise transfer (it exists only now), or, with nothing left, hand the request over.
    fn finish_or_send_tail(&mut self, req: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        let h = self.handoffs.state.get_mut(&req).expect("finishing a known handoff");
        match h.tail.take() {
            Some((from, to, bytes)) => {
                h.flow_done = false;
                self.transfers.start_handoff(now, req, from, to, bytes, queue)
            }
            None => {
                self.complete_handoff(req, now, queue);
                Ok(())
            }
        }
    }

    /// Moves `req` to its decode instance: frees its KV on the prefill instance and runs it there.
    fn complete_handoff(&mut self, req: u32, now: Nanos, queue: &mut Queue) {
        let h = self.handoffs.state.remove(&req).expect("completing a known handoff");
        self.handoffs.in_flight_tokens[h.decode as usize] -= h.tokens;
        let r = &mut self.reqs[req as usize];
        r.transfer.1 = now;
        let from = r.instance;
        if self.instances[from as usize].release_handoff(r) {
            queue.push(now, Event::Wake { instance: from });
        }
        r.instance = h.decode;
        if self.instances[h.decode as usize].accept(req, r, h.blocks) {
            queue.push(now, Event::Wake { instance: h.decode });
        }
    }

    /// Retries waiting handoffs in order while decode instances have room.
    pub(super) fn retry_handoffs(&mut self, now: Nanos, queue: &mut Queue) -> Result<()> {
        while let Some(&req) = self.handoffs.waiting.front() {
            if !self.dispatch_handoff(req, true, now, queue)? {
                break;
            }
            self.handoffs.waiting.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(tokens: &[u64]) -> Vec<InstanceLoad> {
        tokens.iter().map(|&t| InstanceLoad { outstanding_tokens: t, ..Default::default() }).collect()
    }

    #[test]
    fn fewest_outstanding_tokens_first_ties_to_the_lower_index_router_pick_before_all() {
        let req = Request::new(0, 10, 10);
        let mut c = FewestOutstandingTokens;
        assert_eq!(c.candidates(0, &req, &[4, 5, 6, 7], &loads(&[30, 10, 30, 20]), None).unwrap(), vec![5, 7, 4, 6]);
        assert_eq!(c.candidates(0, &req, &[4, 5, 6, 7], &loads(&[30, 10, 30, 20]), Some(6)).unwrap(), vec![6, 5, 7, 4]);
    }
}
