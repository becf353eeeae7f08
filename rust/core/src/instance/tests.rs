//! Unit tests of one instance: building it, queueing, one request through prefill and decode.

use super::*;
use crate::calibration::Efficiency;
use crate::cost::{BatchShape, InstanceSpec, Op};
use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
use crate::memory::MemoryConfig;
use crate::model::fixtures::llama3_8b;
use crate::scheduler::SchedulerConfig;
use crate::time::secs_to_ns;

fn gpu() -> GpuSpec {
    GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes: 80_000_000_000, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 }
}

fn vllm() -> SchedulerConfig {
    SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 }
}

fn instance(scheduler: &SchedulerConfig) -> Instance {
    let memory = MemoryConfig::default();
    Instance::new(InstanceSetup { pool: 3, spec: InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1), memory: &memory, scheduler, experts: None }).unwrap()
}

#[test]
fn the_watermark_is_one_percent_of_the_blocks_rounded_down() {
    assert_eq!([0, 99, 100, 250, 12345].map(kv_watermark), [0, 0, 1, 2, 123]);
    let inst = instance(&vllm());
    let (used, total) = inst.kv_usage();
    assert_eq!((used, total), (0, inst.plan().num_blocks));
    assert_eq!(inst.pool, 3);
    assert_eq!(inst.role, Role::Mixed);
    // could_hold: the request's blocks plus the watermark must fit.
    let free_tokens = (total - kv_watermark(total)) as u64 * 16;
    assert!(inst.could_hold(free_tokens));
    assert!(!inst.could_hold(free_tokens + 1));
}

#[test]
fn a_setup_that_cannot_run_is_refused() {
    let memory = MemoryConfig::default();
    let mut tiny = InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1);
    tiny.gpu.memory_bytes = 1 << 30;
    assert!(matches!(Instance::new(InstanceSetup { pool: 0, spec: tiny, memory: &memory, scheduler: &vllm(), experts: None }), Err(crate::error::Error::Capacity { .. })));
    let swap = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: crate::scheduler::PreemptionMode::Swap, swap_space_gb: 4.0 };
    let mut no_host_link = InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1);
    no_host_link.gpu.host_link_bandwidth = 0.0;
    match Instance::new(InstanceSetup { pool: 0, spec: no_host_link, memory: &memory, scheduler: &swap, experts: None }) {
        Err(crate::error::Error::Config { path, .. }) => assert_eq!(path, "scheduler.preemption_mode"),
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("expected a config error"),
    }
}

#[test]
fn too_long_requests_are_rejected_with_the_reason() {
    let inst = instance(&vllm());
    assert_eq!(inst.reject_reason(&Request::new(0, 8000, 192)), None);
    let reason = inst.reject_reason(&Request::new(0, 8000, 193)).unwrap();
    assert_eq!(reason, "prompt + output = 8193 tokens exceeds the model's 8192-token context");
}

#[test]
fn an_idle_instance_is_woken_once_per_batch_of_arrivals() {
    let mut inst = instance(&vllm());
    let mut reqs = [Request::new(0, 100, 2), Request::new(0, 50, 2)];
    assert!(inst.enqueue(0, &mut reqs[0]), "idle with nothing pending: wake it");
    assert!(!inst.enqueue(1, &mut reqs[1]), "a wake-up is already pending");
    assert_eq!(reqs[1].status, Status::Waiting);
    let load = inst.load();
    assert_eq!((load.outstanding_tokens, load.waiting, load.running), (150, 2, 0));
    inst.woken();
    assert!(!inst.is_busy());
}

#[test]
fn one_request_prefills_then_decodes_then_frees_its_blocks() {
    let mut inst = instance(&vllm());
    let mut reqs = vec![Request::new(0, 100, 2)];
    inst.enqueue(0, &mut reqs[0]);
    inst.woken();

    // Prefill: 100 prompt tokens in ceil(100 / 16) = 7 blocks.
    let start = inst.start_iteration(1_000, &mut reqs).unwrap();
    assert!(inst.is_busy());
    assert_eq!(inst.batch().items.len(), 1);
    assert_eq!(inst.batch().shape.prefill_tokens, 100);
    let mut shape = BatchShape::default();
    shape.add_prefill(100, 0, true);
    let it = inst.cost().iteration(&shape);
    assert_eq!(start, IterationStart { compute_ns: secs_to_ns(it.seconds - it.weight_stall_seconds), transfer_bytes: 0, stream: None, tail_ns: 0 });
    assert_eq!(inst.kv_usage().0, 7);
    let end = 1_000 + start.compute_ns;
    let mut gaps = Vec::new();
    inst.finish_iteration(end, &mut reqs, |t, prev, _| gaps.push((t, prev)));
    assert!(!inst.is_busy());
    assert_eq!((reqs[0].generated, reqs[0].first_token, reqs[0].status), (1, end, Status::Running));
    assert_eq!(reqs[0].first_scheduled, 1_000, "scheduled when its first iteration started");
    assert!(gaps.is_empty(), "the first token has no gap before it");
    assert_eq!(inst.load().outstanding_tokens, 101);
    let record = inst.take_record(end).unwrap();
    assert_eq!((record.start, record.end, record.prefill_tokens, record.decode_seqs, record.kv_blocks, record.running), (1_000, end, 100, 0, 7, 1));

    // Decode: one token, then the request finishes and its blocks return.
    let decode = inst.start_iteration(end, &mut reqs).unwrap();
    assert_eq!((inst.batch().shape.prefill_tokens, inst.batch().shape.decode_seqs), (0, 1));
    let done = end + decode.compute_ns;
    inst.finish_iteration(done, &mut reqs, |t, prev, _| gaps.push((t, prev)));
    assert_eq!(gaps, vec![(done, end)]);
    assert_eq!(reqs[0].first_scheduled, 1_000, "later iterations keep the first");
    assert_eq!((reqs[0].status, reqs[0].completion, reqs[0].blocks), (Status::Finished, done, 0));
    assert_eq!(inst.kv_usage().0, 0);
    assert_eq!(inst.load().outstanding_tokens, 0);
    assert_eq!((inst.stats.iterations, inst.stats.prefill_tokens, inst.stats.decode_tokens, inst.stats.finished, inst.stats.peak_kv_blocks), (2, 100, 1, 1, 7));
    assert_eq!(inst.stats.busy_ns, start.compute_ns + decode.compute_ns);
    assert!(inst.start_iteration(done, &mut reqs).is_none(), "nothing left to run");

    // Energy: busy energy plus idle power of one GPU for the rest of the time.
    let idle = inst.cost().power().idle;
    let horizon = done + 1_000_000_000;
    let expected = inst.stats.busy_energy_joules + idle * (horizon - inst.stats.busy_ns) as f64 * 1e-9;
    assert_eq!(inst.energy_joules(horizon), expected);
}

#[test]
fn a_prefill_instance_hands_requests_off_after_the_first_token() {
    let mut inst = instance(&vllm()).with_role(Role::Prefill);
    let mut reqs = vec![Request::new(0, 100, 5), Request::new(0, 60, 1)];
    inst.enqueue(0, &mut reqs[0]);
    inst.enqueue(1, &mut reqs[1]);
    let s = inst.start_iteration(0, &mut reqs).unwrap();
    inst.finish_iteration(s.compute_ns, &mut reqs, |_, _, _| {});
    assert_eq!(inst.take_handoffs(), vec![0], "a one-token request finishes here instead");
    assert_eq!((reqs[0].status, reqs[0].prefill_instance), (Status::Handoff, reqs[0].instance));
    assert_eq!(reqs[1].status, Status::Finished);
    assert_eq!(inst.kv_usage().0, 7, "the handed-off KV stays until its transfer completes");
    assert!(!inst.release_handoff(&mut reqs[0]), "no one waits: no wake-up");
    assert_eq!(inst.kv_usage().0, 0);
}

#[test]
fn a_decode_instance_reserves_and_accepts_prefilled_requests() {
    let mut inst = instance(&vllm()).with_role(Role::Decode);
    let mut r = Request::new(0, 100, 5);
    r.generated = 1;
    r.computed = 100;
    let blocks = inst.reserve(&r).unwrap();
    assert_eq!(blocks, 7, "101 known tokens in 16-token blocks");
    assert!(inst.accept(0, &mut r, blocks));
    assert_eq!((r.status, r.blocks), (Status::Running, 7));
    assert_eq!(inst.load().outstanding_tokens, 101);
}

#[test]
fn a_sliding_window_model_counts_attention_within_its_window() {
    let memory = MemoryConfig::default();
    let spec = InstanceSpec::new(crate::model::fixtures::mistral_7b(), gpu(), Efficiency::default(), 1);
    let mut inst = Instance::new(InstanceSetup { pool: 0, spec, memory: &memory, scheduler: &vllm(), experts: None }).unwrap();
    assert_eq!(inst.batch().shape.attention_window, Some(4096));
    inst.batch.clear();
    assert_eq!(inst.batch().shape.attention_window, Some(4096), "clearing the batch keeps the window");
    assert_eq!(instance(&vllm()).batch().shape.attention_window, None);
    // KV: a request holds at most 4096 / 16 + 1 blocks, so even ten times the cache's tokens fit.
    let beyond = 10 * inst.plan().num_blocks as u64 * 16;
    assert!(inst.could_hold(beyond));
    assert!(!instance(&vllm()).could_hold(beyond));
}

#[test]
fn instances_with_equal_cost_models_share_one_and_time_alike() {
    // Two instances run the same requests, one on its own cost model and memo, the other on a
    // third instance's (shared): every iteration takes the same time to the nanosecond.
    let sched = vllm();
    let (mut own, mut shared, donor) = (instance(&sched), instance(&sched), instance(&sched));
    assert!(shared.share_cost_of(&donor));
    assert!(std::ptr::eq(shared.cost(), donor.cost()) && !std::ptr::eq(own.cost(), donor.cost()));
    let mk = || (0..40).map(|i| Request::new(0, 50 + 31 * i, 3 + (i * 7) % 40)).collect::<Vec<_>>();
    let (mut ra, mut rb) = (mk(), mk());
    for i in 0..40u32 {
        own.enqueue(i, &mut ra[i as usize]);
        shared.enqueue(i, &mut rb[i as usize]);
    }
    let (mut now, mut iterations) = (0, 0);
    while let Some(a) = own.start_iteration(now, &mut ra) {
        let b = shared.start_iteration(now, &mut rb).expect("the same batches");
        assert_eq!(a.compute_ns, b.compute_ns, "iteration {iterations}");
        now += a.compute_ns;
        own.finish_iteration(now, &mut ra, |_, _, _| {});
        shared.finish_iteration(now, &mut rb, |_, _, _| {});
        iterations += 1;
    }
    assert!(iterations > 40 && ra.iter().all(|r| r.status == crate::request::Status::Finished), "{iterations}");
    // A different model (here another GPU) is not shared.
    let memory = MemoryConfig::default();
    let mut other_gpu = gpu();
    other_gpu.memory_bandwidth = 2.0e12;
    let mut slower = Instance::new(InstanceSetup { pool: 3, spec: InstanceSpec::new(llama3_8b(), other_gpu, Efficiency::default(), 1), memory: &memory, scheduler: &sched, experts: None }).unwrap();
    assert!(!slower.share_cost_of(&donor));
    assert!(!std::ptr::eq(slower.cost(), donor.cost()));
}

#[test]
fn a_synchronous_pipeline_waits_out_its_bubble_at_idle_power() {
    // Llama-3-8B on 2 stages, one decode: it passes once through the stages (m = 1, 2 slots),
    // so each GPU computes its half of the layers and waits out the other half.
    let memory = MemoryConfig::default();
    let spec = InstanceSpec { pp: 2, ..InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1) };
    let mut inst = Instance::new(InstanceSetup { pool: 0, spec, memory: &memory, scheduler: &vllm(), experts: None }).unwrap();
    let mut reqs = vec![Request::new(0, 100, 2)];
    inst.enqueue(0, &mut reqs[0]);
    let prefill = inst.start_iteration(0, &mut reqs).unwrap();
    inst.finish_iteration(prefill.compute_ns, &mut reqs, |_, _, _| {});
    let before = inst.stats.busy_energy_joules;
    inst.start_iteration(prefill.compute_ns, &mut reqs).unwrap();
    let shape = inst.batch().shape;
    let it = inst.cost().iteration(&shape);
    let layered: f64 = inst.cost().breakdown(&shape).iter().filter(|c| !matches!(c.op, Op::Embedding | Op::LmHead | Op::Overhead)).map(|c| c.seconds).sum();
    assert!((it.bubble_seconds - 0.5 * layered).abs() < 1e-12, "{} vs {}", it.bubble_seconds, 0.5 * layered);
    let power = inst.cost().power();
    let watts = power.busy_watts(it.compute_bound_seconds / it.seconds);
    let expected = 2.0 * (watts * (it.seconds - it.bubble_seconds) + power.idle * it.bubble_seconds);
    let got = inst.stats.busy_energy_joules - before;
    assert!((got - expected).abs() < 1e-9 * expected, "{got} vs {expected}");
    assert!(got < 0.75 * 2.0 * watts * it.seconds, "the bubble is not drawn at busy power");
}
