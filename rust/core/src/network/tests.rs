//! Unit tests of the network: latency phases, max-min sharing, the versioned wake-up protocol,
//! byte accounting, determinism and errors.

use super::*;
use crate::error::Error;

fn link(name: &str, gbps: f64, latency: f64) -> LinkSpec {
    LinkSpec { name: name.into(), bandwidth: gbps * 1e9, latency }
}

/// Drives `net` with the versioned wake-up protocol until nothing is pending; returns the
/// completed flows and how many stale wake-ups were dropped.
fn run_to_end(net: &mut Network) -> (Vec<FlowRecord>, usize) {
    let mut queue: BTreeMap<(Nanos, u64), u64> = BTreeMap::new();
    let mut seq = 0;
    let mut done = Vec::new();
    let mut stale = 0;
    if let Some((t, _)) = net.next_event() {
        queue.insert((t, seq), net.version());
        seq += 1;
    }
    while let Some(((now, _), version)) = queue.pop_first() {
        if version != net.version() {
            stale += 1;
            continue;
        }
        done.extend(net.advance(now).expect("time moves forward"));
        if let Some((t, _)) = net.next_event() {
            queue.insert((t, seq), net.version());
            seq += 1;
        }
    }
    (done, stale)
}

fn assert_close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} != {b}");
}

#[test]
fn single_flow_pays_latency_then_full_bandwidth() {
    let mut net = Network::new(vec![link("nvlink", 100.0, 5e-6)]).unwrap();
    let f = net.start_flow(0, &[0], 1_000_000_000).unwrap();
    assert_eq!(net.rate(f), Some(0.0));
    assert_eq!(net.next_event(), Some((5_000, NetEvent::Activate(f))));
    assert!(net.advance(5_000).unwrap().is_empty());
    assert_eq!(net.rate(f), Some(100e9));
    assert_eq!(net.next_event(), Some((10_005_000, NetEvent::Complete(f))));
    let done = net.advance(10_005_000).unwrap();
    assert_eq!(done, vec![FlowRecord { id: f, start: 0, end: 10_005_000, bytes: 1_000_000_000, path: vec![0] }]);
    assert_eq!(net.active_flows(), 0);
    assert_eq!(net.rate(f), None);
    assert_eq!(net.next_event(), None);
}

#[test]
fn two_flows_share_then_survivor_speeds_up() {
    let mut net = Network::new(vec![link("nic", 100.0, 1e-6)]).unwrap();
    let small = net.start_flow(0, &[0], 1_000_000_000).unwrap();
    let large = net.start_flow(0, &[0], 3_000_000_000).unwrap();
    net.advance(1_000).unwrap();
    assert_eq!(net.rate(small), Some(50e9));
    assert_eq!(net.rate(large), Some(50e9));
    // Small: 1 GB at 50 GB/s = 20 ms (= 2 * size / bw). Large then has 3 - 1 = 2 GB left at
    // 100 GB/s: 20 ms more.
    let (done, _) = run_to_end(&mut net);
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].id, done[0].end), (small, 1_000 + 20_000_000));
    assert_eq!((done[1].id, done[1].end), (large, 1_000 + 40_000_000));
}

#[test]
fn survivor_rate_rises_when_the_other_completes() {
    let mut net = Network::new(vec![link("nic", 100.0, 0.0)]).unwrap();
    let a = net.start_flow(0, &[0], 500_000_000).unwrap();
    let b = net.start_flow(0, &[0], 2_000_000_000).unwrap();
    assert_eq!(net.next_event(), Some((10_000_000, NetEvent::Complete(a))));
    let done = net.advance(10_000_000).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(net.rate(b), Some(100e9));
    assert_eq!(net.link_bytes(0), Some(1_000_000_000));
    // 1.5 GB left at 100 GB/s.
    assert_eq!(net.next_event(), Some((25_000_000, NetEvent::Complete(b))));
}

#[test]
fn max_min_gives_unused_share_to_others() {
    // A on link0 (100 GB/s), B on link0+link1, C on link1 (50 GB/s).
    let mut net = Network::new(vec![link("l1", 100.0, 0.0), link("l2", 50.0, 0.0)]).unwrap();
    let a = net.start_flow(0, &[0], 1_000_000_000).unwrap();
    let b = net.start_flow(0, &[0, 1], 1_000_000_000).unwrap();
    let c = net.start_flow(0, &[1], 1_000_000_000).unwrap();
    assert_close(net.rate(b).unwrap(), 25e9);
    assert_close(net.rate(c).unwrap(), 25e9);
    assert_close(net.rate(a).unwrap(), 75e9);
    // Both links are full.
    assert_close(net.rate(a).unwrap() + net.rate(b).unwrap(), 100e9);
    assert_close(net.rate(b).unwrap() + net.rate(c).unwrap(), 50e9);
}

#[test]
fn two_link_flow_limited_by_its_tighter_link() {
    let mut net = Network::new(vec![link("fast", 100.0, 0.0), link("slow", 10.0, 0.0)]).unwrap();
    let f = net.start_flow(0, &[0, 1], 1_000_000_000).unwrap();
    assert_close(net.rate(f).unwrap(), 10e9);
    let g = net.start_flow(0, &[0], 1_000_000_000).unwrap();
    assert_close(net.rate(g).unwrap(), 90e9);
    assert_close(net.rate(f).unwrap(), 10e9);
}

#[test]
fn latency_phase_takes_no_bandwidth() {
    // A on link0 (no latency); B on link1 (1 ms latency) then link0.
    let mut net = Network::new(vec![link("l0", 100.0, 0.0), link("l1", 100.0, 1e-3)]).unwrap();
    let a = net.start_flow(0, &[0], 1_000_000_000).unwrap();
    let b = net.start_flow(0, &[1, 0], 2_000_000_000).unwrap();
    assert_eq!(net.rate(a), Some(100e9));
    assert_eq!(net.rate(b), Some(0.0));
    assert_eq!(net.next_event(), Some((1_000_000, NetEvent::Activate(b))));
    // A stale completion for A (10 ms alone) would be dropped by the protocol.
    let (done, stale) = run_to_end(&mut net);
    // A moved 0.1 GB alone, then 0.9 GB at 50 GB/s: ends at 1 + 18 = 19 ms. B moved 0.9 GB by
    // then, and its 1.1 GB left take 11 ms at 100 GB/s: 30 ms.
    assert_eq!((done[0].id, done[0].end), (a, 19_000_000));
    assert_eq!((done[1].id, done[1].end), (b, 30_000_000));
    assert_eq!(stale, 0);
}

#[test]
fn stale_wakeups_are_detected_by_version() {
    let mut net = Network::new(vec![link("l0", 100.0, 0.0)]).unwrap();
    let a = net.start_flow(0, &[0], 1_000_000_000).unwrap();
    let (t_alone, _) = net.next_event().unwrap();
    let v_alone = net.version();
    assert_eq!(t_alone, 10_000_000);
    net.start_flow(5_000_000, &[0], 1_000_000_000).unwrap();
    assert_ne!(net.version(), v_alone, "a start changes rates, so the old wake-up is stale");
    // A: 0.5 GB left at 50 GB/s from 5 ms.
    assert_eq!(net.next_event(), Some((15_000_000, NetEvent::Complete(a))));
    // Advancing to the stale time is harmless: nothing completes.
    assert!(net.advance(t_alone).unwrap().is_empty());
    assert_eq!(net.next_event(), Some((15_000_000, NetEvent::Complete(a))));
}

#[test]
fn start_at_the_instant_of_a_pending_completion() {
    let mut net = Network::new(vec![link("l0", 100.0, 0.0)]).unwrap();
    let a = net.start_flow(0, &[0], 1_000_000_000).unwrap();
    // A is due at 10 ms; the caller starts another flow at 10 ms before handling it.
    let b = net.start_flow(10_000_000, &[0], 1_000_000_000).unwrap();
    assert_eq!(net.rate(b), Some(100e9), "A is done, B has the link to itself");
    assert_eq!(net.next_event(), Some((10_000_000, NetEvent::Complete(a))));
    let done = net.advance(10_000_000).unwrap();
    assert_eq!((done[0].id, done[0].end), (a, 10_000_000));
    assert_eq!(net.next_event(), Some((20_000_000, NetEvent::Complete(b))));
}

#[test]
fn zero_bytes_complete_after_latency() {
    let links = vec![link("l0", 100.0, 2e-6), link("l1", 100.0, 3e-6), link("l2", 100.0, 0.0)];
    let mut net = Network::new(links).unwrap();
    let f = net.start_flow(100, &[0, 1], 0).unwrap();
    assert_eq!(net.next_event(), Some((5_100, NetEvent::Complete(f))));
    let done = net.advance(5_100).unwrap();
    assert_eq!(done, vec![FlowRecord { id: f, start: 100, end: 5_100, bytes: 0, path: vec![0, 1] }]);
    // Without latency it completes at once and is handed over by the next advance.
    let g = net.start_flow(6_000, &[2], 0).unwrap();
    assert_eq!(net.active_flows(), 0);
    assert_eq!(net.next_event(), Some((6_000, NetEvent::Complete(g))));
    assert_eq!(net.advance(6_000).unwrap()[0].end, 6_000);
    assert_eq!(net.next_event(), None);
}

#[test]
fn bytes_and_utilisation_accounting() {
    let mut net = Network::new(vec![link("l0", 100.0, 0.0), link("l1", 100.0, 0.0)]).unwrap();
    net.start_flow(0, &[0], 1_000_000_000).unwrap();
    net.start_flow(0, &[0, 1], 2_000_000_000).unwrap();
    net.advance(4_000_000).unwrap();
    // 4 ms at 50 GB/s each: 0.2 GB per flow so far.
    assert_eq!(net.link_bytes(0), Some(400_000_000));
    assert_eq!(net.link_bytes(1), Some(200_000_000));
    let (done, _) = run_to_end(&mut net);
    assert_eq!(done.len(), 2);
    assert_eq!(net.link_bytes(0), Some(3_000_000_000));
    assert_eq!(net.link_bytes(1), Some(2_000_000_000));
    // 100 ms horizon: 3 GB of 10 GB capacity, 2 GB of 10 GB.
    assert_close(net.link_utilisation(0, 100_000_000).unwrap(), 0.3);
    assert_close(net.link_utilisation(1, 100_000_000).unwrap(), 0.2);
    // Link 0 is saturated until the last flow ends at 30 ms.
    assert_eq!(done[1].end, 30_000_000);
    assert_close(net.link_utilisation(0, 30_000_000).unwrap(), 1.0);
    assert_eq!(net.link_utilisation(0, 0), Some(0.0));
    assert_eq!(net.link_bytes(2), None);
    assert_eq!(net.link_utilisation(2, 1), None);
}

#[test]
fn ties_go_to_the_lowest_flow_id() {
    let mut net = Network::new(vec![link("l0", 100.0, 1e-6)]).unwrap();
    let ids: Vec<FlowId> = (0..3).map(|_| net.start_flow(0, &[0], 300_000_000).unwrap()).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    assert_eq!(net.next_event(), Some((1_000, NetEvent::Activate(0))));
    net.advance(1_000).unwrap();
    assert_eq!(net.next_event(), Some((1_000 + 9_000_000, NetEvent::Complete(0))));
    let done = net.advance(1_000 + 9_000_000).unwrap();
    assert_eq!(done.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert!(done.iter().all(|r| r.end == 9_001_000));
}

/// 200 flows on random one- or two-link paths; returns the completions and each link's bytes.
fn random_run() -> (Vec<FlowRecord>, Vec<u64>) {
    let mut rng = crate::rng::RngStream::new(7, "network-test");
    let links = vec![link("a", 100.0, 1e-6), link("b", 50.0, 2e-6), link("c", 25.0, 0.0), link("d", 200.0, 5e-7)];
    let mut net = Network::new(links).unwrap();
    let mut done = Vec::new();
    let mut now = 0;
    for _ in 0..200 {
        now += rng.next_u64() % 2_000_000;
        done.extend(net.advance(now).unwrap());
        let first = (rng.next_u64() % 4) as LinkId;
        let second = (rng.next_u64() % 4) as LinkId;
        let path: Vec<LinkId> = if first == second { vec![first] } else { vec![first, second] };
        net.start_flow(now, &path, rng.next_u64() % 500_000_000).unwrap();
    }
    done.extend(run_to_end(&mut net).0);
    let carried = (0..4).map(|l| net.link_bytes(l).unwrap()).collect();
    (done, carried)
}

#[test]
fn runs_are_deterministic_and_conserve_bytes() {
    let (first, carried) = random_run();
    assert_eq!(first.len(), 200);
    assert_eq!((first.clone(), carried.clone()), random_run());
    for (l, &bytes) in carried.iter().enumerate() {
        let expected: u64 = first.iter().filter(|r| r.path.contains(&(l as LinkId))).map(|r| r.bytes).sum();
        assert_eq!(bytes, expected, "link {l}");
    }
    for r in &first {
        assert!(r.end > r.start || r.bytes == 0);
    }
    // Completions come out in time order.
    assert!(first.windows(2).all(|w| w[0].end <= w[1].end));
}

#[test]
fn completion_never_precedes_the_bytes() {
    // A flow alone can never beat bytes / bandwidth plus latency.
    let mut net = Network::new(vec![link("odd", 3.0, 1e-6)]).unwrap();
    let f = net.start_flow(0, &[0], 1_000_000_007).unwrap();
    let (done, _) = run_to_end(&mut net);
    let exact_ns = 1_000.0 + 1_000_000_007.0 / 3e9 * 1e9;
    assert_eq!(done[0].id, f);
    assert!(done[0].end as f64 >= exact_ns && (done[0].end as f64) < exact_ns + 1.0);
}

#[test]
fn errors_never_panic() {
    let bad_bw = Network::new(vec![link("ok", 1.0, 0.0), link("zero", 0.0, 0.0)]).unwrap_err();
    assert!(matches!(&bad_bw, Error::Config { path, .. } if path == "links.1.bandwidth"));
    let nan_bw = Network::new(vec![LinkSpec { name: "nan".into(), bandwidth: f64::NAN, latency: 0.0 }]);
    assert!(matches!(nan_bw, Err(Error::Config { path, .. }) if path == "links.0.bandwidth"));
    let bad_lat = Network::new(vec![link("neg", 1.0, -1e-6)]).unwrap_err();
    assert!(matches!(&bad_lat, Error::Config { path, .. } if path == "links.0.latency"));

    let mut net = Network::new(vec![link("l0", 100.0, 0.0)]).unwrap();
    assert!(net.start_flow(0, &[], 10).is_err());
    assert!(net.start_flow(0, &[1], 10).is_err());
    assert!(net.start_flow(0, &[0, 0], 10).is_err());
    assert_eq!(net.active_flows(), 0);
    net.start_flow(100, &[0], 10).unwrap();
    assert!(net.start_flow(50, &[0], 10).is_err());
    assert!(net.advance(50).is_err());
    assert_eq!(net.active_flows(), 1);
}

#[test]
fn link_spec_rejects_unknown_fields() {
    let ok: LinkSpec = serde_json::from_str(r#"{"name": "nic", "bandwidth": 5e10, "latency": 2e-6}"#).unwrap();
    assert_eq!(ok, link("nic", 50.0, 2e-6));
    assert!(serde_json::from_str::<LinkSpec>(r#"{"name": "nic", "bandwidth": 1, "latency": 0, "x": 1}"#).is_err());
}

#[test]
fn flows_of_other_components_keep_their_rates_and_completion_times() {
    // Links 0-1 joined by a two-link flow; link 2 on its own. Starting and finishing flows on
    // link 2 must not touch the others' rates or completion times, and vice versa.
    let mut net = Network::new(vec![link("a", 30.0, 0.0), link("b", 70.0, 0.0), link("c", 45.0, 0.0)]).unwrap();
    let ab = net.start_flow(0, &[0, 1], 3_000_000_000).unwrap();
    let b = net.start_flow(0, &[1], 7_000_000_000).unwrap();
    let before = (net.rate(ab).unwrap(), net.rate(b).unwrap(), net.next_event());
    assert_eq!(before.0, 30e9);
    assert_eq!(before.1, 40e9);
    let c1 = net.start_flow(0, &[2], 1_000_000).unwrap();
    let c2 = net.start_flow(0, &[2], 2_000_000).unwrap();
    assert_eq!(net.rate(c1), Some(22.5e9));
    assert_eq!(net.rate(c2), Some(22.5e9));
    assert_eq!((net.rate(ab).unwrap(), net.rate(b).unwrap()), (before.0, before.1));
    let done = net.advance(200_000).unwrap();
    assert_eq!(done.iter().map(|r| r.id).collect::<Vec<_>>(), vec![c1, c2]);
    assert_eq!((net.rate(ab).unwrap(), net.rate(b).unwrap(), net.next_event()), before);
    // The joined component still shares as max-min says: ab ends at 100 ms, then b alone.
    let (done, _) = run_to_end(&mut net);
    assert_eq!((done[0].id, done[0].end), (ab, 100_000_000));
    assert_eq!(done[1].id, b);
}
