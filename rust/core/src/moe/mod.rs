//! Mixture-of-experts serving: routing models, expert placement in HBM, DRAM or flash, per-layer
//! expert caches (LRU, LFU, static), prefetching from a routing predictor (Pre-gated MoE,
//! ExpertFlow), token grouping, and the per-layer timeline that turns misses into stalls.

mod aggregate;
pub mod cache;
pub mod cache_policy;
pub mod config;
mod grouping;
pub mod residency;
pub mod routing;
pub mod runtime;
pub mod stats;
mod timeline;
mod timeline_masks;

#[cfg(test)]
mod tests;

pub use cache::{replay_hits, ExpertCache};
pub use cache_policy::{BuiltinExpertCaches, ExpertCacheFactory, ExpertCachePolicy, ExpertCacheSite};
pub use config::{CachePolicy, CacheSpec, ExpertConfig, ExpertTier, GroupingSpec, PrefetchSpec, RoutingKind, RoutingSampling, RoutingSpec};
pub use residency::ExpertResidency;
pub use routing::{ExpertRouter, RoutingTrace};
pub use runtime::{ExpertRuntime, PluggedCaches, TokenSpan};
pub use stats::{ExpertIteration, ExpertStats};
