//! Arrivals: the workload's requests enter the cluster in time order and the router places each
//! on an entry (prefill or mixed) instance, and optionally picks its decode instance.

use crate::error::{Error, Result};
use crate::load_index::LeastLoadedIndex;
use crate::request::{vacant_requests, Request, Status};
use crate::router::{InstanceLoad, Router};
use crate::time::{Nanos, MAX_TIME_NS};

use super::cluster::{Cluster, Event, Queue};
use super::config::Workload;
use super::Role;

/// Checks `workload`'s columns (equal lengths, sorted arrivals within the clock's range, no empty
/// prompt or output) and fills `reqs` with its requests; with `streaming`, with vacant slots (each
/// request is written into its slot when it arrives, [`request_at`]).
pub(super) fn load_requests(workload: &Workload, reqs: &mut Vec<Request>, streaming: bool) -> Result<()> {
    let n = workload.arrival.len();
    if workload.prompt.len() != n || workload.output.len() != n {
        return Err(Error::Simulation { message: format!("workload columns differ in length: {n} arrivals, {} prompts, {} outputs", workload.prompt.len(), workload.output.len()) });
    }
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
    }
    if !workload.hashes.is_empty() && workload.hashes.len() != n {
        return Err(Error::Simulation { message: format!("{} hash lists for {n} requests", workload.hashes.len()) });
    }
    let no_memory = || Error::config("workload.requests", format!("{n} requests need {:.1} GB for the simulator's request table, which could not be allocated; lower workload.requests", (n * std::mem::size_of::<Request>()) as f64 / 1e9));
    if streaming {
        *reqs = vacant_requests(n).ok_or_else(no_memory)?;
    } else {
        reqs.clear();
        reqs.try_reserve_exact(n).map_err(|_| no_memory())?;
        reqs.extend((0..n).map(|i| request_at(workload, i)));
    }
    Ok(())
}

/// Request `i` of `workload` as it arrives.
fn request_at(workload: &Workload, i: usize) -> Request {
    let mut r = Request::new(workload.arrival[i], workload.prompt[i], workload.output[i]);
    if let Some(h) = workload.hashes.get(i) {
        r.hashes = h.as_slice().into();
    }
    r
}

/// The arrivals still to come and what routing them needs.
pub(super) struct Arrivals<'a> {
    /// Arrival times, sorted.
    times: &'a [Nanos],
    /// Index of the next request to arrive.
    next: usize,
    router: Box<dyn Router>,
    /// Whether the router looks at cached prefixes (computing them costs a lookup per instance).
    wants_prefix: bool,
    /// Instances that take arrivals (prefill and mixed), as the router numbers them.
    entry: Vec<usize>,
    /// Decode instances, as the router numbers them.
    decoders: Vec<u32>,
    loads: Vec<InstanceLoad>,
    decode_loads: Vec<InstanceLoad>,
    /// The entry instances' outstanding tokens, kept current event by event, when the router
    /// routes from it (`Router::uses_load_index`).
    index: Option<LeastLoadedIndex>,
    /// Per cluster instance: its slot in `index` (its position in `entry`), if it is an entry instance.
    slot: Vec<Option<u32>>,
}

impl<'a> Arrivals<'a> {
    /// Arrivals at `times` placed by `router` over the `entry` and `decoders` instances.
    /// `instances` is the cluster's instance count; every instance starts with no load.
    pub(super) fn new(times: &'a [Nanos], router: Box<dyn Router>, wants_prefix: bool, entry: Vec<usize>, decoders: Vec<u32>, instances: usize) -> Self {
        let loads = vec![InstanceLoad::default(); entry.len()];
        let decode_loads = vec![InstanceLoad::default(); decoders.len()];
        let index = router.uses_load_index().then(|| LeastLoadedIndex::new(entry.len()));
        let mut slot = vec![None; instances];
        for (s, &i) in entry.iter().enumerate() {
            slot[i] = Some(s as u32);
        }
        Arrivals { times, next: 0, router, wants_prefix, entry, decoders, loads, decode_loads, index, slot }
    }

    /// When the next request arrives, if any is left.
    pub(super) fn next_time(&self) -> Option<Nanos> {
        self.times.get(self.next).copied()
    }

    /// Requests that have arrived so far.
    pub(super) fn arrived(&self) -> usize {
        self.next
    }
}

impl Cluster<'_> {
    /// Brings `instance`'s outstanding tokens up to date in the routers' load index, if the router
    /// routes from one (called after every event that may change an instance's load).
    pub(super) fn note_load(&mut self, instance: u32) {
        let a = &mut self.arrivals;
        if let (Some(index), Some(Some(slot))) = (a.index.as_mut(), a.slot.get(instance as usize)) {
            index.set(*slot as usize, self.instances[instance as usize].load().outstanding_tokens);
        }
    }

    /// The router's pick among the entry instances and its decode pick, for request `idx`.
    fn route(&mut self, idx: usize) -> Result<(usize, Option<usize>)> {
        let a = &mut self.arrivals;
        if let Some(index) = a.index.as_ref() {
            #[cfg(debug_assertions)]
            for (s, &i) in a.entry.iter().enumerate() {
                debug_assert_eq!(index.load(s), self.instances[i].load().outstanding_tokens, "load index stale for instance {i}");
            }
            return Ok((a.router.route_indexed(&self.reqs[idx], index)?, None));
        }
        if a.router.needs_loads() {
            for (l, &i) in a.loads.iter_mut().zip(a.entry.iter()) {
                *l = self.instances[i].load();
                if a.wants_prefix {
                    l.cached_prefix_tokens = self.instances[i].cached_prefix_tokens(&self.reqs[idx].hashes);
                }
            }
            for (l, &d) in a.decode_loads.iter_mut().zip(a.decoders.iter()) {
                *l = self.instances[d as usize].load();
            }
        }
        a.router.route_pair(&self.reqs[idx], &a.loads, &a.decode_loads)
    }

    /// The next request arrives at `now`: routed, then rejected or queued (waking its instance).
    pub(super) fn arrive(&mut self, now: Nanos, queue: &mut Queue) -> Result<()> {
        let idx = self.arrivals.next;
        self.arrivals.next += 1;
        if self.retirement.is_some() {
            self.reqs[idx] = request_at(self.workload, idx);
        }
        let (pick, decode_pick) = self.route(idx)?;
        let a = &self.arrivals;
        if pick >= a.entry.len() || decode_pick.is_some_and(|d| d >= a.decoders.len()) {
            return Err(Error::Policy { message: format!("router chose entry {pick} / decode {decode_pick:?} for request {idx}, out of {} entry and {} decode instances", a.entry.len(), a.decoders.len()) });
        }
        let (routed, preferred) = (a.entry[pick], decode_pick.map(|d| a.decoders[d]));
        let target = match self.mixed_pool_prompt_target(idx as u32, now) {
            Some(t) => t as usize,
            None => {
                if let Some(d) = preferred {
                    self.handoffs.prefer(idx as u32, d);
                }
                routed
            }
        };
        let fits_decode = self.instances[target].role != Role::Prefill || self.arrivals.decoders.iter().any(|&d| self.instances[d as usize].could_hold(self.reqs[idx].peak_kv_tokens()));
        let inst = &mut self.instances[target];
        let req = &mut self.reqs[idx];
        req.instance = target as u32;
        let reason = inst.reject_reason(req).or_else(|| (!fits_decode).then(|| "no decode instance can ever hold its KV cache".to_string()));
        if let Some(reason) = reason {
            req.status = Status::Rejected;
            inst.stats.rejected += 1;
            self.rejections.push((idx as u32, reason));
            return Ok(());
        }
        let wake = inst.enqueue(idx as u32, req);
        self.note_load(target as u32);
        if wake {
            self.schedule(target as u32, now, Event::Wake { instance: target as u32 }, queue);
        }
        Ok(())
    }
}
