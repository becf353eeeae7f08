//! Hostile configuration and workloads: every case is a clear error naming the field, never a
//! wrapped clock or a silently wrong result.

mod common;

use fleetwise_core::calibration::Efficiency;
use fleetwise_core::error::Error;
use fleetwise_core::hardware::GpuSpec;
use fleetwise_core::request::Status;
use fleetwise_core::router::RouterConfig;
use fleetwise_core::sim::{simulate, SimConfig, SimOutput, Workload};
use fleetwise_core::time::MAX_TIME_NS;

/// The shared pool on `gpu` with this `calibration` and power cap, alone behind a round-robin router.
fn config(gpu: GpuSpec, calibration: Efficiency, power_cap_watts: Option<f64>) -> SimConfig {
    let mut pool = common::pool(1, gpu);
    pool.calibration = calibration;
    pool.power_cap_watts = power_cap_watts;
    common::sim_config(vec![pool], RouterConfig::RoundRobin, false)
}

/// The real H100: 80 GB of HBM.
fn gpu() -> GpuSpec {
    common::gpu(80_000_000_000)
}

fn workload(arrival: Vec<u64>) -> Workload {
    let n = arrival.len();
    Workload { arrival, prompt: vec![500; n], output: vec![20; n], hashes: vec![], routing: None, ..Default::default() }
}

fn run(cfg: &SimConfig) -> Result<SimOutput, Error> {
    simulate(cfg, &workload(vec![0, 1_000_000, 2_000_000]))
}

fn config_path(r: Result<SimOutput, Error>) -> (String, String) {
    match r.err().expect("expected an error") {
        Error::Config { path, message } => (path, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn efficiency_factors_far_below_any_real_kernel_are_refused() {
    for (field, eff) in [
        ("gemm_compute", Efficiency { gemm_compute: 1e-300, ..Efficiency::default() }),
        ("memory", Efficiency { memory: 1e-3, ..Efficiency::default() }),
        ("collective", Efficiency { collective: f64::NAN, ..Efficiency::default() }),
    ] {
        let (path, message) = config_path(run(&config(gpu(), eff, None)));
        assert_eq!(path, format!("cluster.pools.0.calibration.{field}"));
        assert!(message.contains("[0.01, 1]"), "{message}");
    }
}

#[test]
fn overheads_of_more_than_seconds_are_refused() {
    let eff = Efficiency { iteration_overhead: 1e9, ..Efficiency::default() };
    let (path, message) = config_path(run(&config(gpu(), eff, None)));
    assert_eq!(path, "cluster.pools.0.calibration.iteration_overhead");
    assert!(message.contains("between 0 and 10 seconds") && message.contains("1000000000.0"), "{message}");
    let eff = Efficiency { layer_overhead: f64::INFINITY, ..Efficiency::default() };
    assert_eq!(config_path(run(&config(gpu(), eff, None))).0, "cluster.pools.0.calibration.layer_overhead");
}

#[test]
fn a_power_cap_at_or_below_idle_is_refused() {
    for cap in [1e-9, 70.0, f64::INFINITY] {
        let (path, message) = config_path(run(&config(gpu(), Efficiency::default(), Some(cap))));
        assert_eq!(path, "cluster.pools.0.power_cap_watts");
        assert!(message.contains("idle power of 70 W"), "{message}");
    }
    // Above idle but below the lowest SM clock's draw (~120 W here) is refused too, naming the
    // lowest cap; at it compute crawls (15% clock) but the run is correct.
    let (path, message) = config_path(run(&config(gpu(), Efficiency::default(), Some(100.0))));
    assert_eq!(path, "cluster.pools.0.power_cap_watts");
    assert!(message.contains("the lowest cap this GPU's power model accepts is 120 W"), "{message}");
    assert!(run(&config(gpu(), Efficiency::default(), Some(120.0))).is_ok());
}

#[test]
fn datasheet_figures_must_be_finite_and_physical() {
    let cases: [(&str, GpuSpec); 7] = [
        ("peak_flops", GpuSpec { peak_flops: 1e-300, ..gpu() }),
        // Absurdly fast figures make every operator free: a wrong number, not a fast GPU.
        ("peak_flops", GpuSpec { peak_flops: 1e308, ..gpu() }),
        ("fp8_peak_flops", GpuSpec { fp8_peak_flops: 2e18, ..gpu() }),
        ("link_bandwidth", GpuSpec { link_bandwidth: 1e20, ..gpu() }),
        ("memory_bandwidth", GpuSpec { memory_bandwidth: f64::INFINITY, ..gpu() }),
        ("host_link_bandwidth", GpuSpec { host_link_bandwidth: 5.0, ..gpu() }),
        ("idle_watts", GpuSpec { idle_watts: 800.0, ..gpu() }),
    ];
    for (field, g) in cases {
        let (path, message) = config_path(run(&config(g, Efficiency::default(), None)));
        assert_eq!(path, format!("cluster.pools.0.gpu.{field}"), "{message}");
        assert!(message.starts_with("h100: "), "{message}");
    }
}

#[test]
fn legal_figures_that_make_an_iteration_last_hours_are_refused_with_the_time() {
    // Each figure is legal on its own, together a one-token decode streams 16 GB of weights at
    // 10 MB/s x 1%: 160,000 s.
    let g = GpuSpec { peak_flops: 1e9, memory_bandwidth: 1e7, ..gpu() };
    let eff = Efficiency { memory: 0.01, ..Efficiency::default() };
    let (path, message) = config_path(run(&config(g, eff, None)));
    assert_eq!(path, "cluster.pools.0.calibration");
    assert!(message.contains("a one-token decode of llama-3-8b on h100 would take 1.50") && message.contains("3600 s"), "{message}");
}

#[test]
fn an_iteration_lasting_hours_blames_what_takes_the_time() {
    // A per-token CPU step of a second: the GPU figures are fine, the engine's overheads are not.
    let eff = Efficiency { token_overhead: Some(1.0), ..Efficiency::default() };
    let (path, message) = config_path(run(&config(gpu(), eff, None)));
    assert_eq!(path, "cluster.pools.0.calibration");
    assert!(message.contains("of it is the engine's per-step CPU time") && !message.contains("GPU figures"), "{message}");
}

#[test]
fn the_clock_never_wraps_it_reports_the_overflow() {
    // Arrivals near the end of representable time: the first iteration would end past it.
    let cfg = config(gpu(), Efficiency::default(), None);
    let e = simulate(&cfg, &workload(vec![MAX_TIME_NS - 1_000])).err().expect("an overflow error");
    match e {
        Error::Simulation { message } => assert!(message.contains("simulated time overflow") && message.contains("instance 0"), "{message}"),
        other => panic!("{other:?}"),
    }
    let e = simulate(&cfg, &workload(vec![MAX_TIME_NS + 1])).err().expect("an arrival error");
    assert!(matches!(e, Error::Simulation { ref message } if message.contains("past the clock's limit")), "{e:?}");
    // Well within the limit, times stay ordered.
    let Ok(out) = simulate(&cfg, &workload(vec![MAX_TIME_NS / 2])) else { panic!("a run far from the limit succeeds") };
    let r = &out.requests[0];
    assert_eq!(r.status, Status::Finished);
    assert!(r.arrival < r.first_token && r.first_token < r.completion && r.completion <= MAX_TIME_NS);
}

#[test]
fn acceptance_classes_given_for_the_wrong_requests_or_pool_are_refused() {
    // Given classes must have one entry per request and name a pool of the cluster.
    let cfg = config(gpu(), Efficiency::default(), None);
    let mut short = workload(vec![0, 1_000_000, 2_000_000]);
    short.given_classes.insert(0, std::sync::Arc::from(vec![0u8, 0]));
    let (path, message) = config_path(simulate(&cfg, &short));
    assert_eq!(path, "workload.acceptance_class");
    assert!(message.contains("give 2 requests, the workload has 3"), "{message}");
    let mut elsewhere = workload(vec![0, 1_000_000, 2_000_000]);
    elsewhere.given_classes.insert(3, std::sync::Arc::from(vec![0u8; 3]));
    let (path, message) = config_path(simulate(&cfg, &elsewhere));
    assert_eq!(path, "workload.acceptance_class");
    assert!(message.contains("classes given for pool 3, of 1 pools"), "{message}");
    // For a pool that does not speculate they change nothing.
    let mut given = workload(vec![0, 1_000_000, 2_000_000]);
    given.given_classes.insert(0, std::sync::Arc::from(vec![0u8; 3]));
    let (a, b) = (simulate(&cfg, &given).unwrap(), run(&cfg).unwrap());
    assert!(a.requests.iter().zip(&b.requests).all(|(x, y)| (x.first_token, x.completion) == (y.first_token, y.completion)));
}
