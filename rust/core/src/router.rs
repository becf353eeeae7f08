//! Routers: which instance gets an arriving request.

use crate::error::{Error, Result};
use crate::load_index::LeastLoadedIndex;
use crate::request::Request;
use crate::rng::RngStream;
use serde::{Deserialize, Serialize};

/// What a router sees of each instance when a request arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceLoad {
    /// Tokens of unfinished requests routed to it: their prompts plus the output generated so far
    /// (what it holds or will hold in KV; future output lengths are unknown to a real router).
    pub outstanding_tokens: u64,
    /// Requests waiting for admission.
    pub waiting: u32,
    /// Requests holding KV.
    pub running: u32,
    /// Prompt tokens of the arriving request already in its prefix cache (prefix-aware routers only).
    pub cached_prefix_tokens: u64,
    /// KV blocks in use (own and prefix cache).
    pub kv_used_blocks: u32,
    /// KV blocks in all.
    pub kv_total_blocks: u32,
}

/// The interface every router implements.
pub trait Router: Send + Sync {
    /// The index of the instance that serves `req`, given every instance's load; an error when
    /// the policy fails (a user's policy raising, say), never a silent default.
    fn route(&mut self, req: &Request, loads: &[InstanceLoad]) -> Result<usize>;

    /// Whether `route` / `route_pair` read the loads; false lets the cluster skip gathering every
    /// instance's load per arrival (the slices then keep their length but not current values).
    fn needs_loads(&self) -> bool {
        true
    }

    /// Whether the router routes from the cluster's load index alone ([`Router::route_indexed`]):
    /// the cluster then keeps the entry instances' outstanding tokens in a [`LeastLoadedIndex`],
    /// updated on the events that change them, and gathers no loads per arrival.
    fn uses_load_index(&self) -> bool {
        false
    }

    /// The entry instance that serves `req`, read from `index` (slot = entry instance, load =
    /// its outstanding tokens); called instead of `route_pair` when `uses_load_index` is true.
    /// The default: the least-loaded entry instance, lowest index on ties.
    fn route_indexed(&mut self, _req: &Request, index: &LeastLoadedIndex) -> Result<usize> {
        index.least().ok_or_else(|| Error::Simulation { message: "routing with an empty load index".into() })
    }

    /// With prefill/decode disaggregation: the instance among `entry` (prefill and mixed instances)
    /// that takes `req`, and optionally the decode instance (index into `decoders`) its KV should
    /// go to; None leaves that choice to the cluster (fewest outstanding tokens with room).
    fn route_pair(&mut self, req: &Request, entry: &[InstanceLoad], _decoders: &[InstanceLoad]) -> Result<(usize, Option<usize>)> {
        Ok((self.route(req, entry)?, None))
    }
}

/// Cycles through the instances in order.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Router for RoundRobin {
    fn needs_loads(&self) -> bool {
        false
    }

    fn route(&mut self, _req: &Request, loads: &[InstanceLoad]) -> Result<usize> {
        let i = self.next % loads.len();
        self.next = (i + 1) % loads.len();
        Ok(i)
    }
}

/// Picks the instance with the fewest outstanding tokens (lowest index on ties).
#[derive(Debug, Clone, Default)]
pub struct LeastOutstandingTokens;

impl Router for LeastOutstandingTokens {
    fn uses_load_index(&self) -> bool {
        true
    }

    fn route(&mut self, _req: &Request, loads: &[InstanceLoad]) -> Result<usize> {
        let mut best = 0;
        for (i, l) in loads.iter().enumerate().skip(1) {
            if l.outstanding_tokens < loads[best].outstanding_tokens {
                best = i;
            }
        }
        Ok(best)
    }
}

/// Picks the instance holding the longest cached prefix of the request, breaking ties (and the
/// common case of no hit anywhere) by fewest outstanding tokens, so shared prefixes stick to the
/// instances that have them while load still spreads (prefix-aware routing as in llm-d and
/// Mooncake's cache-aware scheduling).
#[derive(Debug, Clone, Default)]
pub struct PrefixAffinity;

impl Router for PrefixAffinity {
    fn route(&mut self, _req: &Request, loads: &[InstanceLoad]) -> Result<usize> {
        let mut best = 0;
        for (i, l) in loads.iter().enumerate().skip(1) {
            let b = &loads[best];
            if (l.cached_prefix_tokens, std::cmp::Reverse(l.outstanding_tokens)) > (b.cached_prefix_tokens, std::cmp::Reverse(b.outstanding_tokens)) {
                best = i;
            }
        }
        Ok(best)
    }
}

/// Picks an instance uniformly at random from its own seeded stream.
#[derive(Debug, Clone)]
pub struct Random {
    rng: RngStream,
}

impl Router for Random {
    fn needs_loads(&self) -> bool {
        false
    }

    fn route(&mut self, _req: &Request, loads: &[InstanceLoad]) -> Result<usize> {
        Ok(self.rng.below(loads.len() as u64) as usize)
    }
}

/// A router chosen by `kind` in the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum RouterConfig {
    /// Cycle through instances.
    #[serde(rename = "round-robin")]
    RoundRobin,
    /// Fewest outstanding tokens.
    #[serde(rename = "least-outstanding-tokens")]
    LeastOutstandingTokens,
    /// Uniformly random.
    #[serde(rename = "random")]
    Random,
    /// Longest cached prefix, then fewest outstanding tokens.
    #[serde(rename = "prefix-affinity")]
    PrefixAffinity,
}

impl RouterConfig {
    /// Builds the router; `seed` feeds its random stream, if it has one.
    pub fn build(&self, seed: u64, instances: usize) -> Result<Box<dyn Router>> {
        if instances == 0 {
            return Err(Error::config("cluster.pools", "the cluster has no instances"));
        }
        Ok(match self {
            RouterConfig::RoundRobin => Box::new(RoundRobin::default()),
            RouterConfig::LeastOutstandingTokens => Box::new(LeastOutstandingTokens),
            RouterConfig::Random => Box::new(Random { rng: RngStream::new(seed, "router") }),
            RouterConfig::PrefixAffinity => Box::new(PrefixAffinity),
        })
    }

    /// Whether the router looks at cached prefixes (so the simulator computes them per arrival).
    pub fn uses_prefixes(&self) -> bool {
        matches!(self, RouterConfig::PrefixAffinity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(tokens: &[u64]) -> Vec<InstanceLoad> {
        tokens.iter().map(|&t| InstanceLoad { outstanding_tokens: t, ..Default::default() }).collect()
    }

    #[test]
    fn only_load_aware_routers_ask_for_loads() {
        assert!(!RoundRobin::default().needs_loads());
        assert!(!RouterConfig::Random.build(0, 2).unwrap().needs_loads());
        assert!(RouterConfig::LeastOutstandingTokens.build(0, 2).unwrap().needs_loads());
        assert!(RouterConfig::PrefixAffinity.build(0, 2).unwrap().needs_loads());
    }

    #[test]
    fn least_outstanding_tokens_routes_from_the_index_as_from_the_loads() {
        let mut r = LeastOutstandingTokens;
        assert!(r.uses_load_index() && !RoundRobin::default().uses_load_index() && !PrefixAffinity.uses_load_index());
        let req = Request::new(0, 1, 1);
        let tokens = [50, 20, 30, 20];
        let mut index = LeastLoadedIndex::new(tokens.len());
        for (i, &t) in tokens.iter().enumerate() {
            index.set(i, t);
        }
        assert_eq!(r.route_indexed(&req, &index).unwrap(), 1);
        assert_eq!(r.route_indexed(&req, &index).unwrap(), r.route(&req, &loads(&tokens)).unwrap());
    }

    #[test]
    fn round_robin_cycles() {
        let mut r = RoundRobin::default();
        let req = Request::new(0, 1, 1);
        let l = loads(&[0, 0, 0]);
        let picks: Vec<_> = (0..7).map(|_| r.route(&req, &l).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn least_outstanding_tokens_picks_minimum_lowest_index() {
        let mut r = LeastOutstandingTokens;
        let req = Request::new(0, 1, 1);
        assert_eq!(r.route(&req, &loads(&[50, 20, 30])).unwrap(), 1);
        assert_eq!(r.route(&req, &loads(&[20, 20, 30])).unwrap(), 0);
        assert_eq!(r.route(&req, &loads(&[9, 20, 3])).unwrap(), 2);
    }

    #[test]
    fn prefix_affinity_prefers_cached_prefixes_then_load() {
        let mut r = PrefixAffinity;
        let req = Request::new(0, 1, 1);
        let mut l = loads(&[100, 50, 300]);
        assert_eq!(r.route(&req, &l).unwrap(), 1, "no hits: least loaded");
        l[2].cached_prefix_tokens = 1024;
        assert_eq!(r.route(&req, &l).unwrap(), 2, "the longest cached prefix wins");
        l[0].cached_prefix_tokens = 1024;
        assert_eq!(r.route(&req, &l).unwrap(), 0, "equal prefixes: least loaded of them");
    }

    #[test]
    fn random_router_is_seeded() {
        let cfg = RouterConfig::Random;
        let req = Request::new(0, 1, 1);
        let l = loads(&[0; 5]);
        let mut a = cfg.build(3, 5).unwrap();
        let mut b = cfg.build(3, 5).unwrap();
        let pa: Vec<_> = (0..50).map(|_| a.route(&req, &l).unwrap()).collect();
        let pb: Vec<_> = (0..50).map(|_| b.route(&req, &l).unwrap()).collect();
        assert_eq!(pa, pb);
        assert!(pa.iter().all(|&i| i < 5));
    }
}
