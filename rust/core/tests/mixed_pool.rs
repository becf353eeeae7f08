//! Splitwise's mixed pool: overloaded prompt pools lend work to token machines (and the other way
//! round), every request is served once, and thresholds never reached change nothing.

mod common;

use common::gpu;
use fleetwise_core::request::Status;
use fleetwise_core::router::RouterConfig;
use fleetwise_core::sim::{simulate, MixedPoolConfig, MixedService, Role, SimConfig, SimOutput, Workload};

/// One prefill (prompt) and three decode (token) instances of Llama-3-8B on H100s.
fn split(mixed: Option<MixedPoolConfig>) -> SimConfig {
    let mut prefill = common::pool(1, gpu(80_000_000_000));
    prefill.name = "prompt".into();
    prefill.role = Role::Prefill;
    let mut decode = prefill.clone();
    decode.name = "token".into();
    decode.count = 3;
    decode.role = Role::Decode;
    let mut cfg = common::sim_config(vec![prefill, decode], RouterConfig::LeastOutstandingTokens, false);
    cfg.mixed_pool = mixed;
    cfg
}

/// `n` requests of `prompt` prompt and `output` output tokens, one every `gap_ms` milliseconds.
fn steady(n: u64, gap_ms: u64, prompt: u32, output: u32) -> Workload {
    Workload { arrival: (0..n).map(|i| i * gap_ms * 1_000_000).collect(), prompt: vec![prompt; n as usize], output: vec![output; n as usize], ..Default::default() }
}

/// More prompts than one prompt machine prefills (~14 of 3000 tokens a second): 20 a second for
/// 10 s, 40 output tokens each.
fn burst() -> Workload {
    steady(200, 50, 3000, 40)
}

fn p99_ttft_ms(out: &SimOutput) -> f64 {
    let mut t: Vec<f64> = out.requests.iter().map(|r| (r.first_token - r.arrival) as f64 * 1e-6).collect();
    t.sort_by(f64::total_cmp);
    t[(t.len() * 99).div_ceil(100) - 1]
}

#[test]
fn an_overloaded_prompt_pool_lends_prompts_to_token_machines_and_ttft_drops() {
    let fixed = simulate(&split(None), &burst()).unwrap();
    let mixed = simulate(&split(Some(MixedPoolConfig { prompt_overload_tokens: Some(6000), token_overload_tokens: None })), &burst()).unwrap();
    for out in [&fixed, &mixed] {
        assert!(out.requests.iter().all(|r| r.status == Status::Finished && r.generated == r.output));
    }
    let services = mixed.mixed_pool.as_ref().unwrap();
    let lent = services.iter().filter(|&&s| s == MixedService::PromptOnTokenInstance).count();
    assert!(lent > 20, "{lent} prompts ran on token machines");
    for (r, s) in mixed.requests.iter().zip(services) {
        // A lent prompt is prefilled and decoded on its token machine: no KV transfer.
        if *s == MixedService::PromptOnTokenInstance {
            assert!(r.instance >= 1 && r.prefill_instance == u32::MAX && r.transfer == (0, 0));
        }
    }
    let switches: u64 = mixed.instances.iter().map(|i| i.mixed_pool.unwrap().role_switches).sum();
    assert!(switches >= 1);
    assert!(mixed.instances[0].mixed_pool.unwrap().role_switches == 0, "the prompt machine never decodes");
    for i in &mixed.instances[1..] {
        let m = i.mixed_pool.unwrap();
        assert!(m.mixed_ns <= mixed.end_time && (m.role_switches == 0) == (m.mixed_ns == 0));
    }
    let (f, m) = (p99_ttft_ms(&fixed), p99_ttft_ms(&mixed));
    // Measured: 4606 ms without, 146 ms with (63 of 200 prompts lent).
    assert!(m < 0.2 * f, "P99 TTFT {m:.1} ms with the mixed pool, {f:.1} ms without");
}

#[test]
fn an_overloaded_token_pool_keeps_decodes_on_the_prompt_machine() {
    // Long outputs pile decodes up on every token machine; past 20000 outstanding tokens each,
    // later prefills keep decoding where they ran.
    let work = steady(100, 100, 2000, 600);
    let out = simulate(&split(Some(MixedPoolConfig { prompt_overload_tokens: None, token_overload_tokens: Some(20_000) })), &work).unwrap();
    let services = out.mixed_pool.as_ref().unwrap();
    let kept: Vec<usize> = (0..services.len()).filter(|&i| services[i] == MixedService::DecodeOnPromptInstance).collect();
    assert!(!kept.is_empty() && kept.len() < services.len());
    for &i in &kept {
        let r = &out.requests[i];
        assert!(r.status == Status::Finished && r.instance == 0 && r.prefill_instance == 0 && r.transfer == (0, 0));
    }
    assert_eq!(out.instances[0].mixed_pool.unwrap().foreign_requests, kept.len() as u64);
    assert!(out.instances[0].mixed_pool.unwrap().role_switches >= 1);
}

#[test]
fn thresholds_never_reached_change_nothing() {
    let never = Some(MixedPoolConfig { prompt_overload_tokens: Some(u64::MAX), token_overload_tokens: Some(u64::MAX) });
    let (a, b) = (simulate(&split(None), &burst()).unwrap(), simulate(&split(never), &burst()).unwrap());
    assert_eq!(a.events, b.events);
    assert_eq!(a.end_time, b.end_time);
    for (x, y) in a.requests.iter().zip(&b.requests) {
        assert_eq!((x.first_token, x.completion, x.instance, x.prefill_instance, x.transfer), (y.first_token, y.completion, y.instance, y.prefill_instance, y.transfer));
    }
    assert!(b.mixed_pool.unwrap().iter().all(|&s| s == MixedService::None));
}

#[test]
fn a_cluster_without_prompt_and_token_pools_refuses_a_mixed_pool() {
    let mut cfg = split(Some(MixedPoolConfig { prompt_overload_tokens: Some(10), token_overload_tokens: None }));
    cfg.pools.truncate(1);
    cfg.pools[0].role = Role::Mixed;
    let err = simulate(&cfg, &burst()).err().unwrap().to_string();
    assert!(err.starts_with("cluster.mixed_pool:"), "{err}");
}

