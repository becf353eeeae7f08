//! Mixture-of-experts serving: routing models, expert placement in HBM, DRAM or flash, per-layer
//! expert caches (LRU, LFU, static), prefetching from a routing predictor (Pre-gated MoE,
//! ExpertFlow), token grouping, and the per-layer timeline that turns misses into stalls.

pub mod cache;
pub mod config;
pub mod routing;
pub mod runtime;

pub use cache::{replay_hits, ExpertCache};
pub use config::{CachePolicy, CacheSpec, ExpertConfig, ExpertTier, GroupingSpec, PrefetchSpec, RoutingKind, RoutingSpec};
pub use routing::{ExpertRouter, RoutingTrace};
pub use runtime::{ExpertIteration, ExpertResidency, ExpertRuntime, ExpertStats, TokenSpan};
