//! Tests of `pipeline_groups.rs`.

use super::super::*;
use crate::calibration::Efficiency;
use crate::cost::InstanceSpec;
use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
use crate::memory::MemoryConfig;
use crate::model::fixtures::llama3_8b;
use crate::request::{Request, Status};
use crate::scheduler::SchedulerConfig;
use crate::time::Nanos;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A two-stage H100 instance with `gib` GiB of memory (Llama-3-8B's 16 GB of weights leave
/// little for KV when it is small), pipelining asynchronously.
fn instance(gib: f64, closed_form: bool) -> Instance {
    let gpu = GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes: (gib * (1u64 << 30) as f64) as u64, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 };
    let scheduler = SchedulerConfig::Vllm { max_num_seqs: 48, max_num_batched_tokens: 4096, preemption_mode: Default::default(), swap_space_gb: 0.0 };
    let memory = MemoryConfig { gpu_memory_utilization: 0.95, block_size: 16 };
    let spec = InstanceSpec { pp: 2, ..InstanceSpec::new(llama3_8b(), gpu, Efficiency { iteration_overhead: 1e-3, ..Efficiency::default() }, 1) };
    let mut inst = Instance::new(InstanceSetup { pool: 0, spec, memory: &memory, scheduler: &scheduler, experts: None }).unwrap().with_pipelining(PipelineMode::Async);
    inst.closed_form = closed_form;
    inst
}

/// Per batch: its shape, blocks in use, outstanding tokens, record and finished count; every
/// inter-token gap (one entry per token); the requests at the end; preemptions.
type Trace = (Vec<(crate::cost::BatchShape, u32, u64, IterationRecord, u64)>, Vec<(Nanos, Nanos)>, Vec<Request>, u64);

/// Runs `n` requests (lengths from a fixed sequence, arriving in bursts every 9 batches)
/// through `inst`'s pipeline: stage-1-free and batch-done events in time order.
fn run(mut inst: Instance, n: usize) -> Trace {
    let mut reqs: Vec<Request> = (0..n).map(|i| Request::new(0, 40 + (i * 97 % 700) as u32, 2 + (i * 53 % 260) as u32)).collect();
    // (time, kind, seq): kind 0 = stage 1 free, 1 = batch done, 2 = a burst of arrivals.
    let mut events: BinaryHeap<Reverse<(Nanos, u8, u64)>> = BinaryHeap::new();
    let (mut seq, mut next, mut batches, mut gaps) = (0u64, 0usize, Vec::new(), Vec::new());
    events.push(Reverse((0, 2, 0)));
    while let Some(Reverse((now, kind, _))) = events.pop() {
        match kind {
            0 => inst.stage1_freed(),
            1 => {
                let rec = inst.finish_batch(now, &mut reqs, |t, prev, k| gaps.extend(std::iter::repeat_n((t, prev), k as usize)));
                batches.push((Default::default(), inst.kv_usage().0, inst.load().outstanding_tokens, rec, inst.stats.finished));
            }
            _ => {
                for _ in 0..6.min(n - next) {
                    reqs[next].arrival = now;
                    inst.enqueue(next as u32, &mut reqs[next]);
                    next += 1;
                }
                inst.woken();
                if next < n {
                    seq += 1;
                    events.push(Reverse((now + 90_000_000, 2, seq)));
                }
            }
        }
        if let Some(t) = inst.start_batch(now, &mut reqs).unwrap() {
            batches.push((inst.batch().shape, inst.kv_usage().0, inst.load().outstanding_tokens, inst.batch_record(now), inst.stats.finished));
            seq += 1;
            events.push(Reverse((t.stage1_free, 0, seq)));
            seq += 1;
            events.push(Reverse((t.done, 1, seq)));
        }
    }
    inst.settle_decodes(&mut reqs);
    (batches, gaps, reqs, inst.stats.preemptions)
}

#[test]
fn closed_form_groups_match_the_per_request_batches() {
    // Roomy (no preemption), then tight enough for recompute preemptions.
    for (gib, preempts) in [(40.0, false), (8.4, true)] {
        let closed = run(instance(gib, true), 150);
        let plain = run(instance(gib, false), 150);
        assert_eq!(closed.3 > 0, preempts, "{gib} GiB: {} preemptions", closed.3);
        assert!(closed.2.iter().all(|r| r.status == Status::Finished && r.generated == r.output));
        assert!(closed.1.len() > 10_000, "{} gaps", closed.1.len());
        assert_eq!(closed.0.len(), plain.0.len(), "batch count");
        for (i, (x, y)) in closed.0.iter().zip(&plain.0).enumerate() {
            assert_eq!(format!("{x:?}"), format!("{y:?}"), "batch event {i}");
        }
        assert_eq!(closed.1, plain.1, "inter-token gaps");
        for (i, (x, y)) in closed.2.iter().zip(&plain.2).enumerate() {
            let key = |r: &Request| (r.computed, r.generated, r.blocks, r.first_scheduled, r.first_token, r.last_token, r.completion, r.preemptions, r.status);
            assert_eq!(key(x), key(y), "request {i}");
        }
        assert_eq!(closed.3, plain.3, "preemptions");
    }
}

#[test]
fn groups_carry_the_steady_decodes() {
    // Once the prompts are in, most batches are closed-form passes of a group.
    let mut inst = instance(40.0, true);
    let mut reqs: Vec<Request> = (0..8).map(|_| Request::new(0, 100, 200)).collect();
    for i in 0..8 {
        inst.enqueue(i, &mut reqs[i as usize]);
    }
    inst.woken();
    let (mut now, mut grouped) = (0, 0);
    let mut pending: Vec<Nanos> = Vec::new();
    for _ in 0..200 {
        if let Some(t) = inst.start_batch(now, &mut reqs).unwrap() {
            grouped += inst.batch().items.is_empty() as u32;
            pending.push(t.done);
            now = t.stage1_free;
            inst.stage1_freed();
            continue;
        }
        now = now.max(pending.remove(0));
        inst.finish_batch(now, &mut reqs, |_, _, _| {});
    }
    assert!(grouped > 50, "{grouped} closed-form batches");
}
