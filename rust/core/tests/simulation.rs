//! Whole-simulation properties of the core, without Python.

mod common;

use common::{gpu, model};
use fleetwise_core::calibration::Efficiency;
use fleetwise_core::cost::{BatchShape, CostModel, InstanceSpec};
use fleetwise_core::request::Status;
use fleetwise_core::router::RouterConfig;
use fleetwise_core::scheduler::SchedulerConfig;
use fleetwise_core::sim::{simulate, SimConfig, Workload};
use fleetwise_core::time::secs_to_ns;

/// The shared pool with `count` instances of `memory_bytes` each behind `router`, recording iterations.
fn config(count: u32, memory_bytes: u64, router: RouterConfig) -> SimConfig {
    common::sim_config(vec![common::pool(count, gpu(memory_bytes))], router, true)
}

/// A deterministic pseudo-random workload (LCG), so the test needs no RNG crate.
fn workload(n: usize) -> Workload {
    let mut x: u64 = 12345;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let mut t = 0;
    let mut w = Workload::default();
    for _ in 0..n {
        t += next(100_000_000);
        w.arrival.push(t);
        w.prompt.push(50 + next(2000) as u32);
        w.output.push(1 + next(400) as u32);
    }
    w
}

#[test]
fn every_request_finishes_once_with_its_tokens_and_kv_stays_within_capacity() {
    // ~19 GB usable: a few hundred KV blocks, so preemption happens.
    let cfg = config(2, 20_000_000_000, RouterConfig::LeastOutstandingTokens);
    let w = workload(400);
    let out = simulate(&cfg, &w).unwrap();
    let preemptions: u32 = out.requests.iter().map(|r| r.preemptions).sum();
    assert!(preemptions > 0, "expected KV pressure to preempt");
    for (i, r) in out.requests.iter().enumerate() {
        assert_eq!(r.status, Status::Finished, "request {i}");
        assert_eq!(r.generated, w.output[i]);
        assert_eq!(r.blocks, 0, "finished requests hold no KV");
        assert!(r.first_token >= r.arrival && r.completion >= r.first_token);
    }
    let log = out.iterations.unwrap();
    for (k, &inst) in log.instance.iter().enumerate() {
        assert!(log.kv_blocks[k] <= out.instances[inst as usize].memory.num_blocks);
    }
    let decode: u64 = out.instances.iter().map(|i| i.stats.decode_tokens).sum();
    let total_out: u64 = w.output.iter().map(|&o| o as u64).sum();
    assert_eq!(decode + w.arrival.len() as u64 + preemptions as u64, total_out);
}

#[test]
fn same_seed_same_timeline() {
    let cfg = config(3, 80_000_000_000, RouterConfig::Random);
    let w = workload(300);
    let a = simulate(&cfg, &w).unwrap();
    let b = simulate(&cfg, &w).unwrap();
    for (x, y) in a.requests.iter().zip(b.requests.iter()) {
        assert_eq!((x.instance, x.first_token, x.completion, x.preemptions), (y.instance, y.first_token, y.completion, y.preemptions));
    }
}

#[test]
fn simultaneous_arrivals_share_the_first_iteration() {
    // Three requests arrive at the same instant on one idle instance: the wake runs after all
    // three arrivals, so one prefill iteration serves them and they get the same first token time.
    let cfg = config(1, 80_000_000_000, RouterConfig::RoundRobin);
    let w = Workload { arrival: vec![1_000, 1_000, 1_000], prompt: vec![100, 200, 300], output: vec![2, 2, 2], hashes: vec![], routing: None, ..Default::default() };
    let out = simulate(&cfg, &w).unwrap();
    let cm = CostModel::build(&InstanceSpec::new(model(), gpu(80_000_000_000), Efficiency::default(), 1)).unwrap();
    let mut s = BatchShape::default();
    for p in [100, 200, 300] {
        s.add_prefill(p, 0, true);
    }
    let prefill = secs_to_ns(cm.iteration_seconds(&s));
    let mut d = BatchShape::default();
    for p in [100u64, 200, 300] {
        d.add_decode(p + 1);
    }
    let decode = secs_to_ns(cm.iteration_seconds(&d));
    for r in &out.requests {
        assert_eq!(r.first_token, 1_000 + prefill);
        assert_eq!(r.completion, 1_000 + prefill + decode);
    }
    assert_eq!(out.iterations.unwrap().start.len(), 2);
}

#[test]
fn arrival_at_an_iteration_end_joins_the_next_iteration() {
    // Request 1 arrives exactly when request 0's prefill ends: arrivals at an instant run before
    // the iteration end, so the next iteration (prefill-first) prefills request 1.
    let cfg = config(1, 80_000_000_000, RouterConfig::RoundRobin);
    let cm = CostModel::build(&InstanceSpec::new(model(), gpu(80_000_000_000), Efficiency::default(), 1)).unwrap();
    let mut s = BatchShape::default();
    s.add_prefill(100, 0, true);
    let t0 = secs_to_ns(cm.iteration_seconds(&s));
    let w = Workload { arrival: vec![0, t0], prompt: vec![100, 50], output: vec![3, 1], hashes: vec![], routing: None, ..Default::default() };
    let out = simulate(&cfg, &w).unwrap();
    let mut s1 = BatchShape::default();
    s1.add_prefill(50, 0, true);
    let t1 = secs_to_ns(cm.iteration_seconds(&s1));
    assert_eq!(out.requests[1].first_token, t0 + t1);
    assert_eq!(out.requests[1].completion, t0 + t1);
    let log = out.iterations.unwrap();
    assert_eq!(log.start[1], t0);
    assert_eq!(log.prefill_tokens[1], 50);
}

#[test]
fn unsorted_arrivals_are_an_error_not_a_panic() {
    let cfg = config(1, 80_000_000_000, RouterConfig::RoundRobin);
    let w = Workload { arrival: vec![10, 5], prompt: vec![1, 1], output: vec![1, 1], hashes: vec![], routing: None, ..Default::default() };
    assert!(simulate(&cfg, &w).is_err());
}

#[test]
fn swap_preemption_moves_kv_over_the_host_link_instead_of_recomputing() {
    let mut recompute = config(2, 20_000_000_000, RouterConfig::LeastOutstandingTokens);
    let mut swap = recompute.clone();
    if let SchedulerConfig::Vllm { preemption_mode, .. } = &mut swap.pools[0].scheduler {
        *preemption_mode = fleetwise_core::scheduler::PreemptionMode::Swap;
    }
    recompute.record_iterations = false;
    let w = workload(400);
    let a = simulate(&recompute, &w).unwrap();
    let b = simulate(&swap, &w).unwrap();
    let prompts: u64 = w.prompt.iter().map(|&p| p as u64).sum();
    let prefill = |o: &fleetwise_core::sim::SimOutput| -> u64 { o.instances.iter().map(|i| i.stats.prefill_tokens).sum() };
    // Recompute prefills preempted requests again; swap never does.
    assert!(a.instances.iter().map(|i| i.stats.preemptions).sum::<u64>() > 0);
    assert!(prefill(&a) > prompts);
    assert_eq!(prefill(&b), prompts);
    for inst in &b.instances {
        let s = &inst.stats;
        assert_eq!(s.swap_out_blocks, s.swap_in_blocks, "everything swapped out comes back");
        assert_eq!(inst.host_link_bytes, s.swap_bytes, "swaps are the host link's only traffic");
        let per_block = inst.memory.kv_bytes_per_token * inst.memory.block_size as u64;
        assert_eq!(s.swap_bytes, (s.swap_out_blocks + s.swap_in_blocks) * per_block);
    }
    assert!(b.instances.iter().any(|i| i.stats.swap_out_blocks > 0 && i.stats.swap_wait_ns > 0));
    for (i, r) in b.requests.iter().enumerate() {
        assert_eq!((r.status, r.generated, r.blocks, r.host_blocks), (Status::Finished, w.output[i], 0, 0));
    }
    // Determinism with transfers in the loop.
    let c = simulate(&swap, &w).unwrap();
    assert!(b.requests.iter().zip(c.requests.iter()).all(|(x, y)| x.completion == y.completion));
}

#[test]
fn prefix_cache_skips_shared_prefixes_and_keeps_kv_within_capacity() {
    // Four groups of requests share 1024-token system prompts (64 hash blocks of 16 tokens) and add
    // 64-256 tokens of their own; a small cache forces evictions.
    let mut cfg = config(1, 20_000_000_000, RouterConfig::RoundRobin);
    cfg.pools[0].prefix_caching = true;
    cfg.hash_block_tokens = Some(16);
    let mut w = workload(300);
    w.hashes.clear();
    for i in 0..w.arrival.len() {
        let group = (i % 4) as u64;
        let own = 64 + (i as u32 * 37) % 193;
        w.prompt[i] = 1024 + own;
        let mut h: Vec<u64> = (0..64).map(|b| group * 1_000_000 + b).collect();
        h.extend((0..own / 16).map(|b| 10_000_000 + i as u64 * 1000 + b as u64));
        w.hashes.push(h);
    }
    let out = simulate(&cfg, &w).unwrap();
    let prompts: u64 = w.prompt.iter().map(|&p| p as u64).sum();
    let prefilled: u64 = out.instances.iter().map(|i| i.stats.prefill_tokens).sum();
    let hits: u64 = out.instances.iter().map(|i| i.prefix_hit_tokens).sum();
    let preempted: u32 = out.requests.iter().map(|r| r.preemptions).sum();
    assert!(hits > prompts / 2, "most of each prompt is a shared prefix: {hits} of {prompts}");
    if preempted == 0 {
        assert_eq!(prefilled + hits, prompts, "every prompt token is either computed or found cached");
    }
    assert!(prefilled < prompts / 2);
    for (i, r) in out.requests.iter().enumerate() {
        assert_eq!((r.status, r.generated, r.blocks, r.cache_refs, r.shared_blocks), (Status::Finished, w.output[i], 0, 0, 0));
    }
    let log = out.iterations.unwrap();
    assert!(log.kv_blocks.iter().all(|&b| b <= out.instances[0].memory.num_blocks));
    // Without the cache every token is computed.
    cfg.pools[0].prefix_caching = false;
    let plain = simulate(&cfg, &w).unwrap();
    assert!(plain.instances[0].stats.prefill_tokens >= prompts);
}

#[test]
fn disaggregated_prefill_and_decode_hand_every_request_over() {
    use fleetwise_core::instance::Role;
    // One prefill and one decode instance with small caches, overloaded: handoffs wait for decode
    // memory and prefill instances wait for their handed-off KV to leave.
    let mut cfg = config(2, 20_000_000_000, RouterConfig::LeastOutstandingTokens);
    let mut decode = cfg.pools[0].clone();
    cfg.pools[0].count = 1;
    cfg.pools[0].role = Role::Prefill;
    decode.count = 1;
    decode.role = Role::Decode;
    decode.name = "decode".into();
    cfg.pools.push(decode);
    let mut w = workload(400);
    for a in w.arrival.iter_mut() {
        *a /= 20;
    }
    for layerwise in [false, true] {
        let mut early = 0;
        cfg.pools[0].kv_transfer = if layerwise { fleetwise_core::sim::KvTransfer::Layerwise } else { fleetwise_core::sim::KvTransfer::Serialized };
        let out = simulate(&cfg, &w).unwrap();
        for (i, r) in out.requests.iter().enumerate() {
            assert_eq!((r.status, r.generated, r.blocks), (Status::Finished, w.output[i], 0), "request {i}");
            if w.output[i] > 1 {
                assert_eq!((r.prefill_instance, r.instance), (0, 1), "prefilled on 0, decoded on 1");
                assert!(r.transfer.1 >= r.transfer.0 && r.transfer.0 > 0);
                // Serialized transfers start after the first token; layer-wise ones during the
                // prefill, unless no decode memory was free then (they fall back to serialized).
                if !layerwise {
                    assert!(r.transfer.0 >= r.first_token, "request {i}");
                }
                early += (r.transfer.0 < r.first_token) as usize;
            }
        }
        assert_eq!(early > 0, layerwise, "{early} transfers overlapped their prefill");
        let (p, d) = (&out.instances[0].stats, &out.instances[1].stats);
        if d.preemptions == 0 {
            assert_eq!(d.prefill_tokens, 0, "decode instances prefill only to recompute preempted requests");
        }
        assert!(p.decode_tokens == 0 && d.decode_tokens > 0);
    }
}

#[test]
fn a_plugged_decode_choice_places_every_handoff_and_is_checked() {
    use fleetwise_core::error::Result;
    use fleetwise_core::instance::Role;
    use fleetwise_core::request::Request;
    use fleetwise_core::router::InstanceLoad;
    use fleetwise_core::sim::{simulate_plugged, Control, DecodeChoice, Plugins};

    /// Always the same instance.
    struct Fixed(u32);
    impl DecodeChoice for Fixed {
        fn candidates(&mut self, _index: u32, _req: &Request, _decoders: &[u32], _loads: &[InstanceLoad], _preferred: Option<u32>) -> Result<Vec<u32>> {
            Ok(vec![self.0])
        }
    }
    // One prefill instance (0) and three decode instances (1, 2, 3).
    let mut cfg = config(1, 80_000_000_000, RouterConfig::LeastOutstandingTokens);
    let mut decode = cfg.pools[0].clone();
    cfg.pools[0].role = Role::Prefill;
    decode.count = 3;
    decode.role = Role::Decode;
    decode.name = "decode".into();
    cfg.pools.push(decode);
    let w = workload(60);
    let native = simulate(&cfg, &w).unwrap();
    let spread: std::collections::BTreeSet<u32> = native.requests.iter().filter(|r| r.generated > 1).map(|r| r.instance).collect();
    assert!(spread.len() > 1, "the built-in choice spreads decodes: {spread:?}");
    let plugged = |c: Box<dyn DecodeChoice>| Plugins { decode_choice: Some(c), ..Plugins::default() };
    let out = simulate_plugged(&cfg, &w, &Control::default(), plugged(Box::new(Fixed(2)))).unwrap();
    for (i, r) in out.requests.iter().enumerate() {
        assert_eq!(r.status, Status::Finished, "request {i}");
        if w.output[i] > 1 {
            assert_eq!(r.instance, 2, "request {i}");
        }
    }
    assert_eq!(out.instances[1].stats.decode_tokens + out.instances[3].stats.decode_tokens, 0);
    // Naming the prefill instance is an error that stops the run.
    let err = simulate_plugged(&cfg, &w, &Control::default(), plugged(Box::new(Fixed(0)))).err().expect("refused");
    assert!(err.to_string().contains("named instance 0 for request 0; the decode instances are [1, 2, 3]"), "{err}");
}
