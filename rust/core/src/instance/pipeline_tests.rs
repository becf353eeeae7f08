//! Tests of `pipeline.rs`.

use super::*;

#[test]
fn flow_shop_follows_the_recurrence() {
    // Three stages of 3, 5 and 2 ns. Batch A at t=0: stage ends 3, 8, 10.
    let mut shop = FlowShop::new(3);
    assert_eq!(shop.enter(0, &[3, 5, 2]), Some((3, 10)));
    // Batch B formed when stage 1 frees (t=3): stage 1 ends 6, stage 2 waits for A until 8 and
    // ends 13, stage 3 ends 15.
    assert_eq!(shop.enter(3, &[3, 5, 2]), Some((6, 15)));
    assert_eq!(shop.stage_free(), &[6, 13, 15]);
    // Batch C, a short one (1, 1, 1) at t=6: 7, max(7, 13) + 1 = 14, max(14, 15) + 1 = 16.
    assert_eq!(shop.enter(6, &[1, 1, 1]), Some((7, 16)));
    // A batch formed late, after everything drained: no waiting, 20 + 3 + 5 + 2.
    assert_eq!(shop.enter(20, &[3, 5, 2]), Some((23, 30)));
    assert_eq!(shop.enter(Nanos::MAX - 1, &[3, 5, 2]), None);
}

#[test]
fn a_batch_in_flight_is_found_along_the_running_list() {
    let items = |ids: &[u32]| ids.iter().map(|&req| Item { req, tokens: 1, draft: 0 }).collect::<Vec<_>>();
    let (mut flying, mut ready) = (Vec::new(), Vec::new());
    assert!(split_along(&[5, 9, 2, 7, 4], &items(&[9, 7]), &mut flying, &mut ready));
    assert_eq!((flying.as_slice(), ready.as_slice()), (&[9, 7][..], &[5, 2, 4][..]));
    // Out of running order, or not all running: not split (the caller falls back to a set).
    for batch in [&[7, 9][..], &[9, 8][..]] {
        (flying.clear(), ready.clear());
        assert!(!split_along(&[5, 9, 2, 7, 4], &items(batch), &mut flying, &mut ready), "{batch:?}");
    }
}

#[test]
fn balanced_stages_pipeline_without_bubbles() {
    // Two equal stages of 10 ns: batches formed every 10 ns finish every 10 ns after the
    // first (steady state: one batch per stage time, not per two).
    let mut shop = FlowShop::new(2);
    let done: Vec<Nanos> = (0..4).map(|i| shop.enter(10 * i, &[10, 10]).unwrap().1).collect();
    assert_eq!(done, [20, 30, 40, 50]);
}

fn pipelined_instance() -> Instance {
    use crate::calibration::Efficiency;
    use crate::cost::InstanceSpec;
    use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
    use crate::instance::InstanceSetup;
    use crate::memory::MemoryConfig;
    use crate::scheduler::SchedulerConfig;
    let gpu = GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes: 80_000_000_000, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 };
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let spec = InstanceSpec { pp: 2, ..InstanceSpec::new(crate::model::fixtures::llama3_8b(), gpu, Efficiency { iteration_overhead: 1e-3, ..Efficiency::default() }, 1) };
    Instance::new(InstanceSetup { pool: 0, spec, memory: &MemoryConfig::default(), scheduler: &sched, experts: None }).unwrap().with_pipelining(PipelineMode::Async)
}

/// The stage times, in ns, of the batch the instance formed last.
fn stage_ns(inst: &Instance) -> Vec<Nanos> {
    inst.cost().stage_costs(&inst.batch().shape).seconds.iter().map(|&s| secs_to_ns(s)).collect()
}

#[test]
fn an_instance_keeps_two_batches_in_flight_and_splits_the_ready_requests() {
    let mut inst = pipelined_instance();
    assert!(inst.is_pipelined());
    let mut reqs: Vec<Request> = (0..4).map(|_| Request::new(0, 100, 3)).collect();
    for (i, r) in reqs.iter_mut().enumerate() {
        inst.enqueue(i as u32, r);
    }
    inst.woken();
    // Batch A: the four prompts. Stage 1 (with the 1 ms CPU step) is the longer stage.
    let a = inst.start_batch(0, &mut reqs).unwrap().unwrap();
    let sa = stage_ns(&inst);
    assert_eq!(inst.batch().items.len(), 4);
    assert!(sa[0] > sa[1]);
    assert_eq!(a, BatchTimes { stage1_free: sa[0], done: sa[0] + sa[1] });
    assert!(inst.is_busy() && inst.start_batch(0, &mut reqs).unwrap().is_none(), "stage 1 is busy");
    // Stage 1 frees: every running request is in flight, nothing to form; the instance may be woken.
    inst.stage1_freed();
    assert!(inst.start_batch(a.stage1_free, &mut reqs).unwrap().is_none());
    assert!(!inst.is_busy());
    let record = inst.finish_batch(a.done, &mut reqs, |_, _, _| {});
    assert_eq!((record.start, record.end, record.prefill_tokens), (0, a.done, 400));
    assert!(reqs.iter().all(|r| r.generated == 1 && r.first_token == a.done));
    // Batch B: the first two of the four ready decodes (ceil(4 / 2)); C, formed when B frees
    // stage 1, the other two. C's stage 2 starts once its stage 1 and B's stage 2 are both done.
    let b = inst.start_batch(a.done, &mut reqs).unwrap().unwrap();
    let sb = stage_ns(&inst);
    assert_eq!(inst.batch().items.iter().map(|i| i.req).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(b, BatchTimes { stage1_free: a.done + sb[0], done: a.done + sb[0] + sb[1] });
    inst.stage1_freed();
    let c = inst.start_batch(b.stage1_free, &mut reqs).unwrap().unwrap();
    let sc = stage_ns(&inst);
    assert_eq!(inst.batch().items.iter().map(|i| i.req).collect::<Vec<_>>(), [2, 3]);
    let c1 = b.stage1_free + sc[0];
    assert_eq!(c, BatchTimes { stage1_free: c1, done: c1.max(b.done) + sc[1] });
    assert_eq!(inst.batches_in_flight(), 2);
    // Two batches in flight (= pp): blocked even once stage 1 frees, until B is done.
    inst.stage1_freed();
    assert!(inst.is_busy() && inst.start_batch(c.stage1_free, &mut reqs).unwrap().is_none());
    inst.finish_batch(b.done, &mut reqs, |_, _, _| {});
    assert_eq!(reqs.iter().map(|r| r.generated).collect::<Vec<_>>(), [2, 2, 1, 1]);
    assert!(!inst.is_busy());
    let (used, total) = inst.kv_usage();
    assert!(used <= total);
    assert_eq!(inst.stats.iterations, 3);
}

#[test]
fn the_mode_defaults_to_async_for_pipelines_and_refuses_what_needs_sync() {
    assert_eq!(pipeline_mode(None, 2, None, &[]).unwrap(), PipelineMode::Async);
    assert_eq!(pipeline_mode(None, 1, None, &[]).unwrap(), PipelineMode::Sync);
    assert_eq!(pipeline_mode(None, 4, Some(4), &[]).unwrap(), PipelineMode::Sync);
    assert_eq!(pipeline_mode(None, 2, None, &["offload"]).unwrap(), PipelineMode::Sync);
    assert_eq!(pipeline_mode(Some(PipelineMode::Sync), 2, None, &[]).unwrap(), PipelineMode::Sync);
    let err = |r: Result<PipelineMode>| match r {
        Err(Error::Config { path, message }) => (path, message),
        other => panic!("expected a config error, got {other:?}"),
    };
    let (path, message) = err(pipeline_mode(Some(PipelineMode::Async), 2, Some(3), &[]));
    assert_eq!(path, "parallelism.microbatches");
    assert!(message.contains("pipeline: sync"), "{message}");
    let (path, message) = err(pipeline_mode(Some(PipelineMode::Async), 2, None, &["offload", "experts"]));
    assert_eq!(path, "parallelism.pipeline");
    assert!(message.contains("offload, experts"), "{message}");
}
