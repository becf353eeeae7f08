//! The phases of an instance's iteration: swap KV over the host link, then compute while (or
//! after) offloaded weights stream in, then the compute that needs them all (a speculating
//! decode's proposer); the iteration ends when those are done, and the next one starts at the
//! same instant.

use crate::error::{Error, Result};
use crate::instance::{InstanceStats, IterationStart};
use crate::sketch::QuantileSketch;
use crate::time::{at, ns_to_secs, Nanos, MAX_TIME_NS};

use super::cluster::{Cluster, Event, Queue};
use super::run_ahead::RunAhead;
use super::transfers::Transfers;
use super::Role;

/// Where an instance's iteration is: swapping KV first, then computing while (or after) its
/// offloaded weights stream in, then its tail (`IterationStart::tail_ns`). It ends when the
/// compute, every stream flow and the tail are done.
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

/// Where every instance's iteration is (None: idle).
pub(super) struct Iterations {
    pending: Vec<Option<Pending>>,
}

impl Iterations {
    /// No iteration in progress on any of `instances` instances.
    pub(super) fn new(instances: usize) -> Self {
        Iterations { pending: vec![None; instances] }
    }

    /// The compute phase: streams start now; the compute runs under them (overlap) or after them.
    fn run(&mut self, idx: u32, now: Nanos, ahead: &mut RunAhead, queue: &mut Queue, net: &mut Transfers) -> Result<()> {
        let p = self.pending[idx as usize].as_mut().expect("an iteration is in progress");
        p.since = now;
        let mut overlap = true;
        if let Some(ws) = p.start.stream {
            overlap = ws.overlap;
            p.flows_left = net.start(now, idx, ws.flash_bytes, true, queue)? as u32 + net.start(now, idx, ws.dram_bytes, false, queue)? as u32;
        }
        if overlap || p.flows_left == 0 {
            ahead.schedule(idx, compute_end(now, p.start.compute_ns, idx)?, Event::IterationEnd { instance: idx }, queue);
        }
        Ok(())
    }

    /// A flow of `idx` finished at `now`; returns true when the whole iteration is done.
    fn flow_done(&mut self, stats: &mut InstanceStats, idx: u32, now: Nanos, ahead: &mut RunAhead, queue: &mut Queue, net: &mut Transfers) -> Result<bool> {
        let p = self.pending[idx as usize].as_mut().expect("a flow belongs to an iteration in progress");
        if p.swapping {
            p.swapping = false;
            stats.swap_wait_ns += now - p.since;
            self.run(idx, now, ahead, queue, net)?;
            return Ok(false);
        }
        p.flows_left -= 1;
        if p.flows_left > 0 {
            return Ok(false);
        }
        let overlap = p.start.stream.is_some_and(|s| s.overlap);
        if !overlap {
            stats.weight_stall_ns += now - p.since;
            ahead.schedule(idx, compute_end(now, p.start.compute_ns, idx)?, Event::IterationEnd { instance: idx }, queue);
            return Ok(false);
        }
        if p.compute_done {
            stats.weight_stall_ns += now - (p.since + p.start.compute_ns);
            return self.tail_or_end(idx, now, ahead, queue);
        }
        Ok(false)
    }

    /// The compute of `idx` ended at `now`; returns true when the whole iteration is done.
    pub(super) fn compute_done(&mut self, idx: u32, now: Nanos, ahead: &mut RunAhead, queue: &mut Queue) -> Result<bool> {
        let p = self.pending[idx as usize].as_mut().expect("compute ends for an iteration in progress");
        if p.flows_left > 0 {
            p.compute_done = true;
            return Ok(false);
        }
        self.tail_or_end(idx, now, ahead, queue)
    }

    /// The compute and the streams of `idx` are done at `now`: runs the compute that follows them
    /// (the iteration ends with its own `IterationEnd`), or ends the iteration (true).
    fn tail_or_end(&mut self, idx: u32, now: Nanos, ahead: &mut RunAhead, queue: &mut Queue) -> Result<bool> {
        let p = self.pending[idx as usize].as_mut().expect("an iteration in progress");
        if p.start.tail_ns > 0 {
            let tail = std::mem::take(&mut p.start.tail_ns);
            p.compute_done = false;
            ahead.schedule(idx, compute_end(now, tail, idx)?, Event::IterationEnd { instance: idx }, queue);
            return Ok(false);
        }
        self.pending[idx as usize] = None;
        Ok(true)
    }
}

impl Cluster<'_> {
    /// Starts `idx`'s next iteration at `now`, if it has work: its swap first, else its compute
    /// and weight streams; then the layer-wise KV transfers of the prefills it completes.
    pub(super) fn begin_iteration(&mut self, idx: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        if self.instances[idx as usize].is_pipelined() {
            return self.begin_batch(idx, now, queue);
        }
        let inst = &mut self.instances[idx as usize];
        let started = inst.start_iteration(now, self.reqs);
        if let Some(e) = inst.take_policy_error() {
            return Err(e);
        }
        let Some(start) = started else { return Ok(()) };
        let swapping = self.transfers.start(now, idx, start.transfer_bytes, false, queue)?;
        self.iterations.pending[idx as usize] = Some(Pending { start, since: now, swapping, flows_left: 0, compute_done: false });
        if !swapping {
            self.iterations.run(idx, now, &mut self.ahead, queue, &mut self.transfers)?;
        }
        self.start_layerwise_handoffs(idx, now, queue)
    }

    /// A swap or weight-stream flow of `idx` finished at `now`; returns true when the whole
    /// iteration is done.
    pub(super) fn iteration_flow_done(&mut self, idx: u32, now: Nanos, queue: &mut Queue) -> Result<bool> {
        self.iterations.flow_done(&mut self.instances[idx as usize].stats, idx, now, &mut self.ahead, queue, &mut self.transfers)
    }

    /// Finishes `idx`'s iteration, moves its prefilled requests on, and starts its next iteration.
    pub(super) fn end_iteration(&mut self, idx: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        self.apply_iteration(idx, now);
        for req in self.instances[idx as usize].take_handoffs() {
            self.prefilled(req, now, queue)?;
        }
        if self.instances[idx as usize].role == Role::Decode {
            self.retry_handoffs(now, queue)?;
        }
        self.mixed_pool_iteration_ended(idx, now);
        self.begin_iteration(idx, now, queue)
    }

    /// Applies the finished iteration of `idx` at `now` and logs it.
    fn apply_iteration(&mut self, idx: u32, now: Nanos) {
        let inst = &mut self.instances[idx as usize];
        if let (Some(l), Some(r)) = (self.log.as_mut(), inst.take_record(now)) {
            l.push(idx, &r);
        }
        let mut gaps = GapRuns::new(&mut self.itl);
        inst.finish_iteration(now, self.reqs, |t, prev, n| gaps.push(t, prev, n));
        gaps.finish();
    }
}

/// Feeds an iteration's inter-token gaps to the run's sketch: consecutive tokens of a batch mostly
/// share one gap, so each run of equal gaps is added at once (in order, so the sketch ends
/// bit-identical to one add per token).
pub(super) struct GapRuns<'a> {
    itl: &'a mut QuantileSketch,
    gap: Nanos,
    count: u64,
}

impl<'a> GapRuns<'a> {
    /// An empty run over `itl`.
    pub(super) fn new(itl: &'a mut QuantileSketch) -> Self {
        GapRuns { itl, gap: 0, count: 0 }
    }

    /// `n` tokens at time `t` whose previous tokens came at `prev`.
    pub(super) fn push(&mut self, t: Nanos, prev: Nanos, n: u64) {
        let gap = t - prev;
        if self.count > 0 && gap != self.gap {
            self.itl.add_repeated(self.gap, self.count);
            self.count = 0;
        }
        self.gap = gap;
        self.count += n;
    }

    /// Adds the last run.
    pub(super) fn finish(self) {
        self.itl.add_repeated(self.gap, self.count);
    }
}
