//! Policies supplied as objects rather than configuration (a user's own, e.g. from Python).

use crate::error::Result;
use crate::prefix::PrefixEvictor;
use crate::router::Router;
use crate::scheduler::Planner;
use std::collections::BTreeMap;

/// Builds the planner of one instance (its index in the cluster) of a pool whose scheduler is a
/// user's policy.
pub type PlannerFactory = Box<dyn Fn(usize) -> Result<Box<dyn Planner>> + Send + Sync>;

/// Builds the prefix-cache eviction policy of one instance (its index in the cluster).
pub type EvictorFactory = Box<dyn Fn(usize) -> Result<Box<dyn PrefixEvictor>> + Send + Sync>;

/// Policies supplied as objects rather than configuration (a user's own, e.g. from Python).
#[derive(Default)]
pub struct Plugins {
    /// Replaces the configured router.
    pub router: Option<Box<dyn Router>>,
    /// Per pool index: planners for its instances, run by vLLM v1's scheduling loop within the
    /// pool's configured limits.
    pub planners: BTreeMap<usize, PlannerFactory>,
    /// Per pool index: prefix-cache eviction policies for its instances (pools with prefix caching).
    pub evictors: BTreeMap<usize, EvictorFactory>,
}
