//! Policies supplied as objects rather than configuration (a user's own, e.g. from Python).

use crate::error::Result;
use crate::moe::ExpertCacheFactory;
use crate::prefix::PrefixEvictor;
use crate::router::Router;
use crate::scheduler::BatchScheduler;
use std::collections::BTreeMap;

use super::DecodeChoice;

/// Builds the batch scheduler (the per-step plan of vLLM v1's loop) of one instance (its index in
/// the cluster) of a pool whose scheduler is a user's policy.
pub type BatchSchedulerFactory = Box<dyn Fn(usize) -> Result<Box<dyn BatchScheduler>> + Send + Sync>;

/// Builds the prefix-cache eviction policy of one instance (its index in the cluster).
pub type EvictorFactory = Box<dyn Fn(usize) -> Result<Box<dyn PrefixEvictor>> + Send + Sync>;

/// Policies supplied as objects rather than configuration (a user's own, e.g. from Python).
#[derive(Default)]
pub struct Plugins {
    /// Replaces the configured router.
    pub router: Option<Box<dyn Router>>,
    /// Per pool index: batch schedulers for its instances, run by vLLM v1's scheduling loop within
    /// the pool's configured limits.
    pub batch_schedulers: BTreeMap<usize, BatchSchedulerFactory>,
    /// Replaces the default choice of decode instance for prefilled requests (disaggregated pools).
    pub decode_choice: Option<Box<dyn DecodeChoice>>,
    /// Per pool index: prefix-cache eviction policies for its instances (pools with prefix caching).
    pub evictors: BTreeMap<usize, EvictorFactory>,
    /// Per pool index: expert cache policies for each GPU of its instances (pools with offloaded
    /// experts), in place of the configured built-in cache.
    pub expert_caches: BTreeMap<usize, ExpertCacheFactory>,
}
