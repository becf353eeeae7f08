//! Tests of the expert runtime on a small MoE whose timeline can be computed by hand.

use super::cache_policy::{ExpertCachePolicy, ExpertCacheSite};
use super::config::{ExpertConfig, ExpertTier};
use super::routing::RoutingTrace;
use super::runtime::{ExpertRuntime, TokenSpan};
use crate::calibration::Efficiency;
use crate::cost::CostModel;
use crate::request::Request;
use std::sync::Arc;
use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
use crate::model::ModelSpec;
use crate::moe::config::{CachePolicy, CacheSpec, GroupingSpec, PrefetchSpec, RoutingKind, RoutingSpec};

/// A small MoE: 4 layers of 4 experts, top-1, experts of 3 x 1024 x 2048 x 2 B = 12.58 MB.
fn model() -> ModelSpec {
    ModelSpec {
        name: "tiny-moe".into(),
        num_layers: 4,
        hidden_size: 1024,
        num_heads: 8,
        num_kv_heads: 8,
        head_dim: 128,
        intermediate_size: 2048,
        vocab_size: 1000,
        max_position_embeddings: 4096,
        dtype_bytes: 2,
        num_experts: 4,
        experts_per_token: 1,
        moe_intermediate_size: 2048,
        ..Default::default()
    }
}

/// A GPU whose host link moves one expert in `fetch` seconds.
fn cost(fetch: f64) -> CostModel {
    cost_of(model(), fetch)
}

/// `m` on a GPU whose host link moves one of [`model`]'s experts in `fetch` seconds.
fn cost_of(m: ModelSpec, fetch: f64) -> CostModel {
    let eb = 3.0 * 1024.0 * 2048.0 * 2.0;
    let gpu = GpuSpec { name: "g".into(), peak_flops: 1e15, fp8_peak_flops: 0.0, memory_bytes: 80_000_000_000, memory_bandwidth: 2e12, link_bandwidth: 1e11, link_latency: 0.0, nic_bandwidth: 0.0, nic_latency: 0.0, host_link_bandwidth: eb / fetch, host_link_latency: 0.0, tdp_watts: 0.0, idle_watts: 0.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 0 };
    let eff = Efficiency { gemm_compute: 1.0, attention_compute: 1.0, memory: 1.0, attention_memory: None, elementwise_memory: None, collective: 1.0, iteration_overhead: 0.0, layer_overhead: 0.0, attention_cta: None, gemm_ridge_exponent: None, prefill_pad_tokens: None, ..Default::default() };
    CostModel::build(&crate::cost::InstanceSpec::new(m, gpu, eff, 1)).unwrap()
}

/// One request whose token t picks expert `(t + l) mod 4` in layer l (a new expert every layer).
fn trace(tokens: u64) -> Arc<RoutingTrace> {
    let experts = (0..tokens).flat_map(|t| (0..4).map(move |l| ((t + l) % 4) as u16)).collect();
    Arc::new(RoutingTrace { layers: 4, k: 1, offsets: vec![0, tokens], experts })
}

fn config(cache: u32, prefetch: Option<f64>) -> ExpertConfig {
    ExpertConfig {
        placement: ExpertTier::Dram,
        routing: RoutingSpec { kind: RoutingKind::Trace, ..RoutingSpec::default() },
        cache: CacheSpec { policy: CachePolicy::Lru, experts_per_layer: cache },
        prefetch: prefetch.map(|accuracy| PrefetchSpec { accuracy, lead_layers: 1 }),
        ..ExpertConfig::resident()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

const DECODE: [TokenSpan; 1] = [TokenSpan { req: 0, start: 0, tokens: 1 }];

#[test]
fn on_demand_misses_stall_every_layer() {
    let (f, base) = (0.5e-3, 1e-3);
    let cm = cost(f);
    let c = cm.expert_seconds(1.0, 1.0);
    let mut rt = ExpertRuntime::new(&config(0, None), &cm, Some(trace(4)), 1, "t", None).unwrap();
    assert!(close(rt.fetch_seconds(), f));
    let x = rt.iteration(&DECODE, &cm, base, 2e-3);
    // Every layer: router at +base, fetch f, experts c.
    assert!(close(x.seconds, 2e-3 + 4.0 * (base + f + c)));
    assert!(close(x.stall_seconds, 4.0 * f));
    assert_eq!((rt.stats.lookups, rt.stats.misses, rt.stats.hits), (4, 4, 0));
    assert_eq!(x.fetch_bytes, (4.0 * cm.expert_bytes_per_gpu()) as u64);
    assert_eq!(rt.stats.activated, 4);
}

#[test]
fn pregated_prefetch_hides_fetches_shorter_than_a_layer() {
    // f < base + c: the next layer's expert arrives while this layer computes; only layer 0 stalls.
    let (f, base) = (0.5e-3, 1e-3);
    let cm = cost(f);
    let c = cm.expert_seconds(1.0, 1.0);
    let mut rt = ExpertRuntime::new(&config(0, Some(1.0)), &cm, Some(trace(4)), 1, "t", None).unwrap();
    let x = rt.iteration(&DECODE, &cm, base, 0.0);
    assert!(close(x.seconds, 4.0 * (base + c) + f));
    assert!(close(x.stall_seconds, f));
    assert_eq!((rt.stats.misses, rt.stats.prefetch_hits), (1, 3));
    assert_eq!(rt.stats.wasted_prefetch_bytes, 0);
}

#[test]
fn pregated_prefetch_is_link_bound_when_fetches_outlast_layers() {
    // f > base + c: the link runs back to back from layer 0's router on; the iteration ends one
    // expert compute after the last fetch: base + 4 f + c.
    let (f, base) = (5e-3, 1e-3);
    let cm = cost(f);
    let c = cm.expert_seconds(1.0, 1.0);
    let mut rt = ExpertRuntime::new(&config(0, Some(1.0)), &cm, Some(trace(4)), 1, "t", None).unwrap();
    let x = rt.iteration(&DECODE, &cm, base, 0.0);
    assert!(close(x.seconds, base + 4.0 * f + c));
    assert!(close(x.stall_seconds, x.seconds - 4.0 * (base + c)));
    // On demand it is 4 (base + f + c): prefetch saves 3 (base + c).
    let mut od = ExpertRuntime::new(&config(0, None), &cm, Some(trace(4)), 1, "t", None).unwrap();
    assert!(close(od.iteration(&DECODE, &cm, base, 0.0).seconds - x.seconds, 3.0 * (base + c)));
}

#[test]
fn wrong_predictions_waste_bytes_and_save_nothing() {
    let (f, base) = (0.5e-3, 1e-3);
    let cm = cost(f);
    let c = cm.expert_seconds(1.0, 1.0);
    let mut rt = ExpertRuntime::new(&config(0, Some(0.0)), &cm, Some(trace(4)), 1, "t", None).unwrap();
    let x = rt.iteration(&DECODE, &cm, base, 0.0);
    // Each wrong prefetch finishes before the next layer's router, so demand fetches never queue.
    assert!(close(x.seconds, 4.0 * (base + f + c)));
    let eb = cm.expert_bytes_per_gpu();
    assert_eq!(rt.stats.wasted_prefetch_bytes, (3.0 * eb) as u64);
    assert_eq!(rt.stats.prefetch_bytes, (3.0 * eb) as u64);
    assert_eq!(rt.stats.misses, 4);
}

#[test]
fn cached_experts_hit_on_the_next_token() {
    // Token t uses expert (t + l) mod 4 in layer l, so tokens 0-3 each bring a new expert into
    // every layer and tokens 4-7 find all of them cached (capacity 4 per layer).
    let cm = cost(1e-3);
    let mut rt = ExpertRuntime::new(&config(4, None), &cm, Some(trace(8)), 1, "t", None).unwrap();
    for t in 0..8 {
        rt.iteration(&[TokenSpan { req: 0, start: t, tokens: 1 }], &cm, 1e-3, 0.0);
    }
    // 32 lookups: the first 4 tokens miss in every layer (16), the next 4 hit (16).
    assert_eq!((rt.stats.lookups, rt.stats.misses, rt.stats.hits), (32, 16, 16));
    let x = rt.iteration(&[TokenSpan { req: 0, start: 8, tokens: 1 }], &cm, 1e-3, 0.0);
    assert_eq!((x.stall_seconds, x.fetch_bytes), (0.0, 0));
    // HBM: 4 layers x 4 cached + 4 staging buffers = all 16 experts: nothing saved.
    assert_eq!(rt.stats.hbm_saved_bytes, 0);
    let two = ExpertRuntime::new(&config(2, None), &cm, Some(trace(8)), 1, "t", None).unwrap();
    let eb = cm.expert_bytes_per_gpu();
    assert_eq!(two.stats.hbm_bytes, (eb * 12.0).round() as u64);
    assert_eq!(two.stats.hbm_saved_bytes, (eb * 16.0).round() as u64 - (eb * 12.0).round() as u64);
}

#[test]
fn resident_experts_never_stall() {
    let cm = cost(1e-3);
    let mut rt = ExpertRuntime::new(&ExpertConfig { routing: RoutingSpec { kind: RoutingKind::Trace, ..RoutingSpec::default() }, ..ExpertConfig::resident() }, &cm, Some(trace(4)), 1, "t", None).unwrap();
    let c = cm.expert_seconds(1.0, 1.0);
    let x = rt.iteration(&DECODE, &cm, 1e-3, 0.0);
    assert!(close(x.seconds, 4.0 * (1e-3 + c)));
    assert_eq!((x.stall_seconds, x.fetch_bytes, rt.stats.lookups), (0.0, 0, 0));
}

#[test]
fn unique_experts_of_a_long_prefill_match_the_uniform_expectation() {
    // 4 experts, top-1, uniform: 2 tokens touch 4 (1 - (3/4)^2) = 1.75 experts on average.
    let cm = cost(1e-3);
    let mut rt = ExpertRuntime::new(&ExpertConfig::resident(), &cm, None, 5, "t", None).unwrap();
    let n = 4000;
    for i in 0..n {
        rt.iteration(&[TokenSpan { req: i, start: 0, tokens: 2 }], &cm, 0.0, 0.0);
    }
    let per_layer = rt.stats.activated as f64 / (n as f64 * 4.0);
    assert!((per_layer - cm.model().expected_unique_experts(2.0)).abs() < 0.02, "{per_layer}");
}

#[test]
fn grouping_picks_requests_that_share_experts() {
    let cm = cost(1e-3);
    let mut cfg = config(0, None);
    cfg.grouping = Some(GroupingSpec { batch: 2, affinity: true });
    // Requests 0..4: request r's token 0 uses expert (r mod 2) in every layer... built as a trace:
    // requests 0 and 2 use expert 0, requests 1 and 3 expert 1.
    let experts = (0..4u16).flat_map(|r| std::iter::repeat_n(r % 2, 4)).collect();
    let t = Arc::new(RoutingTrace { layers: 4, k: 1, offsets: vec![0, 1, 2, 3, 4], experts });
    let mut rt = ExpertRuntime::new(&cfg, &cm, Some(t), 1, "t", None).unwrap();
    let spans: Vec<TokenSpan> = (0..4).map(|r| TokenSpan { req: r, start: 0, tokens: 1 }).collect();
    rt.iteration(&spans, &cm, 0.0, 0.0);
    let mut reqs: Vec<Request> = (0..4).map(|_| Request::new(0, 10, 5)).collect();
    for (i, r) in reqs.iter_mut().enumerate() {
        r.computed = 10;
        r.generated = 1;
        r.last_token = [5, 1, 3, 2][i];
    }
    // Request 1 waited longest and seeds the group; request 3 shares its experts.
    let running = [0, 1, 2, 3];
    assert_eq!(rt.park(&running, &reqs), vec![0, 2]);
    // Now request 2 has waited longest: it seeds the group and request 0 shares its experts.
    reqs[2].last_token = 0;
    assert_eq!(rt.park(&running, &reqs), vec![1, 3]);
    // Without affinity the two longest waiting run: 2 and 1.
    cfg.grouping = Some(GroupingSpec { batch: 2, affinity: false });
    let rr = ExpertRuntime::new(&cfg, &cm, Some(trace(1)), 1, "t", None).unwrap();
    assert_eq!(rr.park(&running, &reqs), vec![0, 3]);
}

/// A plugged cache that keeps `pinned` resident in every layer and admits nothing; `fail` makes
/// every lookup an error.
struct Pinned {
    pinned: Vec<u16>,
    lookups: std::sync::Arc<std::sync::Mutex<Vec<(u32, Vec<u16>, Vec<u16>)>>>,
    fail: bool,
}

impl ExpertCachePolicy for Pinned {
    fn contains(&self, _layer: u32, expert: u16) -> bool {
        self.pinned.contains(&expert)
    }
    fn lookup(&mut self, layer: u32, hits: &[u16], misses: &[u16]) -> crate::error::Result<()> {
        if self.fail {
            return Err(crate::error::Error::Policy { message: "pinned: lookup() failed".into() });
        }
        self.lookups.lock().unwrap().push((layer, hits.to_vec(), misses.to_vec()));
        Ok(())
    }
    fn describe(&self) -> String {
        "pinned".into()
    }
}

#[test]
fn a_plugged_cache_decides_hits_and_sees_every_lookup() {
    // Token t uses expert (t + l) mod 4 in layer l; expert 1 pinned: token 0 hits in layer 1 only,
    // token 1 in layer 0 only.
    let cm = cost(1e-3);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sites = std::sync::Mutex::new(Vec::new());
    let make = |site: ExpertCacheSite| -> crate::error::Result<Box<dyn ExpertCachePolicy>> {
        sites.lock().unwrap().push(site);
        Ok(Box::new(Pinned { pinned: vec![1], lookups: seen.clone(), fail: false }))
    };
    let mut rt = ExpertRuntime::new(&config(2, None), &cm, Some(trace(2)), 1, "t", Some(&make)).unwrap();
    assert_eq!(*sites.lock().unwrap(), vec![ExpertCacheSite { rank: 0, layers: 4, experts: 4, capacity: 2 }]);
    for t in 0..2 {
        rt.iteration(&[TokenSpan { req: 0, start: t, tokens: 1 }], &cm, 1e-3, 0.0);
    }
    assert_eq!((rt.stats.lookups, rt.stats.hits, rt.stats.misses), (8, 2, 6));
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], (0, vec![], vec![0]));
    assert_eq!(seen[1], (1, vec![1], vec![]));
    assert_eq!(seen[4], (0, vec![1], vec![]));
    assert!(rt.take_error().is_none());
}

#[test]
fn a_plugged_cache_error_is_kept_for_the_instance() {
    let cm = cost(1e-3);
    let make = |_: ExpertCacheSite| -> crate::error::Result<Box<dyn ExpertCachePolicy>> { Ok(Box::new(Pinned { pinned: vec![], lookups: Default::default(), fail: true })) };
    let mut rt = ExpertRuntime::new(&config(2, None), &cm, Some(trace(2)), 1, "t", Some(&make)).unwrap();
    rt.iteration(&DECODE, &cm, 1e-3, 0.0);
    assert!(rt.take_error().expect("the lookup's error").to_string().contains("pinned: lookup() failed"));
    assert!(rt.take_error().is_none());
    // The configured policy "policy" without a plugged one is refused.
    let mut cfg = config(2, None);
    cfg.cache.policy = CachePolicy::Policy;
    let err = ExpertRuntime::new(&cfg, &cm, Some(trace(2)), 1, "t", None).err().expect("refused");
    assert!(err.to_string().contains("experts.cache.policy"), "{err}");
}

#[test]
fn the_bitmask_timeline_matches_the_flag_by_flag_one() {
    // The built-in caches take the bitmask timeline (`timeline_masks.rs`); the same caches plugged
    // in take the flag-by-flag one. Both must give the same iterations and counters, bit for bit,
    // with Zipf routing per token and per iteration, LRU and LFU, wrong prefetch guesses and
    // prefetching 1 or 2 layers ahead.
    use super::cache_policy::BuiltinExpertCaches;
    use super::config::RoutingSampling;
    use crate::rng::RngStream;
    let cm = cost(0.7e-3);
    for (sampling, policy, cache, prefetch, lead) in [
        (RoutingSampling::PerIteration, CachePolicy::Lru, 2, Some(0.6), 1),
        (RoutingSampling::PerIteration, CachePolicy::Lru, 1, Some(0.9), 2),
        (RoutingSampling::PerIteration, CachePolicy::Lfu, 2, Some(0.5), 1),
        (RoutingSampling::PerIteration, CachePolicy::Lru, 3, None, 1),
        (RoutingSampling::PerToken, CachePolicy::Lru, 2, Some(0.7), 1),
        (RoutingSampling::PerToken, CachePolicy::Lfu, 1, Some(0.8), 2),
    ] {
        let mut cfg = config(cache, None);
        cfg.routing = RoutingSpec { kind: RoutingKind::Zipf, zipf_exponent: 0.9, sampling, ..RoutingSpec::default() };
        cfg.cache.policy = policy;
        cfg.prefetch = prefetch.map(|accuracy| PrefetchSpec { accuracy, lead_layers: lead });
        let make = |site: ExpertCacheSite| -> crate::error::Result<Box<dyn ExpertCachePolicy>> { Ok(Box::new(BuiltinExpertCaches::new(policy, site, |_| vec![1.0; 4]))) };
        let mut masks = ExpertRuntime::new(&cfg, &cm, None, 5, "t", None).unwrap();
        let mut flags = ExpertRuntime::new(&cfg, &cm, None, 5, "t", Some(&make)).unwrap();
        assert!(masks.masks_apply() && !flags.masks_apply());
        let mut rng = RngStream::new(3, "spans");
        for i in 0..400u64 {
            let spans: Vec<TokenSpan> = (0..1 + rng.below(5) as u32).map(|r| TokenSpan { req: r, start: i, tokens: 1 + rng.below(if i % 7 == 0 { 40 } else { 2 }) as u32 }).collect();
            let base = 1e-4 * (1 + rng.below(20)) as f64;
            assert_eq!(masks.iteration(&spans, &cm, base, 1e-3), flags.iteration(&spans, &cm, base, 1e-3), "iteration {i} of {sampling:?} {policy:?}");
        }
        assert_eq!(masks.stats, flags.stats);
        assert!(masks.stats.prefetch_hits > 0 || prefetch.is_none());
    }
}

#[test]
fn a_prefetch_lead_of_the_whole_model_or_more_is_refused() {
    let cm = cost(1.0);
    let layers = cm.model().moe_layers();
    for lead in [layers, layers + 96] {
        let mut cfg = config(2, Some(1.0));
        cfg.prefetch = Some(PrefetchSpec { accuracy: 1.0, lead_layers: lead });
        let err = ExpertRuntime::new(&cfg, &cm, Some(trace(4)), 1, "t", None).err().expect("refused");
        assert!(err.to_string().contains("lead_layers") && err.to_string().contains(&format!("{layers} MoE layers")), "{err}");
    }
    let mut cfg = config(2, Some(1.0));
    cfg.prefetch = Some(PrefetchSpec { accuracy: 1.0, lead_layers: layers - 1 });
    assert!(ExpertRuntime::new(&cfg, &cm, Some(trace(4)), 1, "t", None).is_ok());
}

#[test]
fn settings_that_would_be_ignored_or_impossible_are_refused() {
    let cm = cost(1.0);
    let refused = |cfg: ExpertConfig, cm: &CostModel| ExpertRuntime::new(&cfg, cm, Some(trace(4)), 1, "t", None).err().map(|e| e.to_string()).unwrap_or_default();
    // No staging buffer: a fetched expert has nowhere to land.
    let mut cfg = config(2, None);
    cfg.staging_experts = Some(0);
    assert!(refused(cfg, &cm).contains("experts.staging_experts"));
    // Offload-only settings with every expert in HBM.
    for (field, set) in [("staging_experts", (|c: &mut ExpertConfig| c.staging_experts = Some(4)) as fn(&mut ExpertConfig)), ("capacity_gb", |c| c.capacity_gb = Some(100.0))] {
        let mut cfg = ExpertConfig { routing: RoutingSpec { kind: RoutingKind::Trace, ..RoutingSpec::default() }, ..ExpertConfig::resident() };
        set(&mut cfg);
        assert!(refused(cfg, &cm).contains(&format!("experts.{field}")), "{field}");
    }
    // A MoE model whose layers are all dense (every layer before the first MoE layer).
    let mut m = model();
    m.first_dense_layers = m.num_layers;
    assert!(refused(config(2, None), &cost_of(m, 1.0)).contains("has no MoE layer"));
    assert!(refused(config(2, None), &cm).is_empty());
}
