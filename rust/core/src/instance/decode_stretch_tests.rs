//! Tests of `decode_stretch.rs`.

use super::super::*;
use crate::calibration::Efficiency;
use crate::cost::InstanceSpec;
use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
use crate::memory::MemoryConfig;
use crate::model::fixtures::llama3_8b;
use crate::request::{Request, Status};
use crate::scheduler::{PreemptionMode, SchedulerConfig};
use crate::time::Nanos;

/// An H100 with `gib` GiB of memory: Llama-3-8B's 16 GB of weights leave little for KV.
fn instance(gib: f64, mode: PreemptionMode, closed_form: bool) -> Instance {
    let gpu = GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes: (gib * (1u64 << 30) as f64) as u64, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 };
    let scheduler = SchedulerConfig::Vllm { max_num_seqs: 48, max_num_batched_tokens: 4096, preemption_mode: mode, swap_space_gb: 0.05 };
    let memory = MemoryConfig { gpu_memory_utilization: 0.95, block_size: 16 };
    let mut inst = Instance::new(InstanceSetup { pool: 0, spec: InstanceSpec::new(llama3_8b(), gpu, Efficiency::default(), 1), memory: &memory, scheduler: &scheduler, experts: None }).unwrap();
    inst.closed_form = closed_form;
    inst
}

/// Everything a run leaves: per iteration the batch shape, blocks, load and record; every
/// inter-token gap (one entry per token); and the requests at the end.
type Trace = (Vec<(crate::cost::BatchShape, u32, u64, u32, u64)>, Vec<(Nanos, Nanos)>, Vec<Request>, u64);

/// Runs `n` requests (lengths from a fixed sequence, arriving in bursts) through `inst`.
fn run(mut inst: Instance, n: usize) -> Trace {
    let mut reqs: Vec<Request> = (0..n).map(|i| Request::new(0, 40 + (i * 97 % 700) as u32, 2 + (i * 53 % 260) as u32)).collect();
    let (mut now, mut next, mut iters, mut gaps) = (0, 0, Vec::new(), Vec::new());
    while reqs.iter().any(|r| !matches!(r.status, Status::Finished)) {
        // A burst of arrivals every 7 iterations.
        if iters.len() % 7 == 0 {
            for _ in 0..5.min(n - next) {
                let r = &mut reqs[next];
                r.arrival = now;
                inst.enqueue(next as u32, r);
                next += 1;
            }
            inst.woken();
        }
        let Some(start) = inst.start_iteration(now, &mut reqs) else {
            assert!(next < n, "idle with requests left");
            iters.push(Default::default());
            continue;
        };
        let shape = inst.batch().shape;
        now += start.compute_ns.max(1) + start.transfer_bytes / 1000;
        inst.finish_iteration(now, &mut reqs, |t, prev, k| gaps.extend(std::iter::repeat_n((t, prev), k as usize)));
        let rec = inst.take_record(now).unwrap();
        iters.push((shape, inst.kv_usage().0, inst.load().outstanding_tokens, rec.running, inst.stats.finished));
    }
    inst.settle_decodes(&mut reqs);
    (iters, gaps, reqs, inst.stats.preemptions)
}

fn assert_same(a: Trace, b: Trace) {
    assert_eq!(a.0.len(), b.0.len(), "iteration count");
    for (i, (x, y)) in a.0.iter().zip(&b.0).enumerate() {
        assert_eq!(x, y, "iteration {i}");
    }
    assert_eq!(a.1, b.1, "inter-token gaps");
    for (i, (x, y)) in a.2.iter().zip(&b.2).enumerate() {
        let key = |r: &Request| (r.computed, r.generated, r.blocks, r.first_scheduled, r.first_token, r.last_token, r.completion, r.preemptions, r.status);
        assert_eq!(key(x), key(y), "request {i}");
    }
    assert_eq!(a.3, b.3, "preemptions");
}

#[test]
fn closed_form_decodes_match_the_per_request_passes() {
    // Roomy (no preemption), then tight enough for recompute and swap preemptions.
    for (gib, mode, preempts) in [(40.0, PreemptionMode::Recompute, false), (16.8, PreemptionMode::Recompute, true), (16.8, PreemptionMode::Swap, true)] {
        let closed = run(instance(gib, mode, true), 120);
        let plain = run(instance(gib, mode, false), 120);
        assert_eq!(closed.3 > 0, preempts, "{gib} GiB {mode:?}: {} preemptions", closed.3);
        assert!(closed.2.iter().all(|r| r.status == Status::Finished && r.generated == r.output));
        assert!(closed.1.len() > 10_000, "{} gaps", closed.1.len());
        assert_same(closed, plain);
    }
}

#[test]
fn members_are_settled_mid_stretch_with_their_true_counters() {
    let mut a = instance(40.0, PreemptionMode::Recompute, true);
    let mut b = instance(40.0, PreemptionMode::Recompute, false);
    let mk = || (0..6).map(|i| Request::new(0, 100 + 30 * i, 50)).collect::<Vec<_>>();
    let (mut ra, mut rb) = (mk(), mk());
    for i in 0..6 {
        a.enqueue(i, &mut ra[i as usize]);
        b.enqueue(i, &mut rb[i as usize]);
    }
    let mut now = 0;
    for _ in 0..20 {
        let s = a.start_iteration(now, &mut ra).unwrap();
        b.start_iteration(now, &mut rb).unwrap();
        now += s.compute_ns;
        a.finish_iteration(now, &mut ra, |_, _, _| {});
        b.finish_iteration(now, &mut rb, |_, _, _| {});
    }
    assert!(a.stretch.members.len() == 6 && a.stretch.pass >= 18, "all six decode in closed form");
    assert_eq!(ra[0].generated, 2, "a member's own counters wait");
    a.settle_decodes(&mut ra);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!((x.computed, x.generated, x.blocks, x.last_token), (y.computed, y.generated, y.blocks, y.last_token));
    }
    assert_eq!(ra[0].generated, 20, "one prefill then 19 decodes");
}

#[test]
fn many_members_finishing_in_one_pass_leave_together() {
    // Twelve members reach their last token in the same pass (more than a scan of ids
    // handles), three run on past block boundaries: the same as the per-request passes.
    let mk = || (0..15u32).map(|i| Request::new(0, 100 + 7 * i, if i < 12 { 30 } else { 70 })).collect::<Vec<_>>();
    let (mut a, mut b) = (instance(40.0, PreemptionMode::Recompute, true), instance(40.0, PreemptionMode::Recompute, false));
    let (mut ra, mut rb) = (mk(), mk());
    for i in 0..15u32 {
        a.enqueue(i, &mut ra[i as usize]);
        b.enqueue(i, &mut rb[i as usize]);
    }
    let (mut now, mut left) = (0, Vec::new());
    while let Some(s) = a.start_iteration(now, &mut ra) {
        let t = b.start_iteration(now, &mut rb).expect("the same iterations");
        assert_eq!((s.compute_ns, a.kv_usage()), (t.compute_ns, b.kv_usage()));
        now += s.compute_ns;
        a.finish_iteration(now, &mut ra, |_, _, _| {});
        b.finish_iteration(now, &mut rb, |_, _, _| {});
        assert_eq!(a.load().running, b.load().running);
        left.push(15 - a.load().running);
    }
    assert!(left.windows(2).any(|w| w[1] - w[0] == 12), "twelve leave at once: {left:?}");
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!((x.status, x.generated, x.completion, x.blocks), (y.status, y.generated, y.completion, y.blocks));
    }
}

#[test]
fn a_member_joining_with_more_than_a_block_of_room_crosses_when_it_runs_out() {
    // Requests holding blocks beyond their next token (given two spare blocks after their
    // prefill) first cross a boundary more than a block size of passes after joining; one of
    // them finishes before it does. Same blocks, loads and requests as the per-request passes.
    let mk = || (0..6u32).map(|i| Request::new(0, 100 + 9 * i, [60, 70, 20, 45, 90, 33][i as usize])).collect::<Vec<_>>();
    let (mut a, mut b) = (instance(40.0, PreemptionMode::Recompute, true), instance(40.0, PreemptionMode::Recompute, false));
    let (mut ra, mut rb) = (mk(), mk());
    for i in 0..6u32 {
        a.enqueue(i, &mut ra[i as usize]);
        b.enqueue(i, &mut rb[i as usize]);
    }
    let mut now = 0;
    let mut iteration = 0;
    while let Some(s) = a.start_iteration(now, &mut ra) {
        let t = b.start_iteration(now, &mut rb).expect("the same iterations");
        assert_eq!((s.compute_ns, a.kv_usage()), (t.compute_ns, b.kv_usage()), "iteration {iteration}");
        now += s.compute_ns;
        a.finish_iteration(now, &mut ra, |_, _, _| {});
        b.finish_iteration(now, &mut rb, |_, _, _| {});
        if iteration == 0 {
            for i in [0usize, 2, 4] {
                for (inst, reqs) in [(&mut a, &mut ra), (&mut b, &mut rb)] {
                    reqs[i].blocks += 2;
                    inst.kv.allocate(2);
                }
            }
        }
        assert_eq!(a.load(), b.load(), "iteration {iteration}");
        iteration += 1;
    }
    assert!(iteration > 80, "{iteration}");
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!((x.status, x.generated, x.completion, x.last_token), (y.status, y.generated, y.completion, y.last_token));
    }
    assert_eq!(a.kv_usage(), (0, b.kv_usage().1));
}
