//! The expert cache as a policy: what the runtime asks of the HBM expert caches of one GPU, the
//! built-in caches (LRU, LFU, static) behind it, and the factory through which a user's own policy
//! (a Python `ExpertCachePolicy`) is plugged in instead.

use super::cache::ExpertCache;
use super::config::CachePolicy;
use crate::error::Result;

/// Where an expert cache policy runs: one GPU of one instance, and the sizes it caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertCacheSite {
    /// The GPU's rank among the instance's expert-parallel GPUs.
    pub rank: u32,
    /// MoE layers (each has its own cache).
    pub layers: u32,
    /// Experts of one layer on this GPU; the policy sees their local ids `0..experts`.
    pub experts: u32,
    /// Experts of one layer the GPU keeps cached.
    pub capacity: u32,
}

/// The HBM expert caches of one GPU, one per MoE layer. Each iteration, for each layer, the runtime
/// asks which needed experts are resident, fetches the others, then reports the layer's lookups.
pub trait ExpertCachePolicy: Send + Sync {
    /// Whether `expert` (a local id) is resident in `layer`'s cache.
    fn contains(&self, layer: u32, expert: u16) -> bool;

    /// One layer's lookups of one iteration, in order: each of `hits` (resident when asked) is
    /// used, then each of `misses` (fetched) is used and offered to the cache, which may admit it
    /// and evict a resident expert. An error stops the simulation.
    fn lookup(&mut self, layer: u32, hits: &[u16], misses: &[u16]) -> Result<()>;

    /// The policy's name in messages.
    fn describe(&self) -> String;

    /// Writes into `hit`, for each expert `i` of `layer` (local ids, in order), whether it is used
    /// (`used[i] > 0`) and resident: by default [`Self::contains`] on each used expert in order.
    fn used_and_resident(&self, layer: u32, used: &[f64], hit: &mut Vec<bool>) {
        hit.clear();
        hit.extend(used.iter().enumerate().map(|(i, &c)| c > 0.0 && self.contains(layer, i as u16)));
    }
}

/// Builds the expert cache policy of one GPU (`site`) of an instance (its index in the cluster).
pub type ExpertCacheFactory = Box<dyn Fn(usize, ExpertCacheSite) -> Result<Box<dyn ExpertCachePolicy>> + Send + Sync>;

/// The built-in caches of one GPU: an [`ExpertCache`] per layer, all of one [`CachePolicy`].
#[derive(Debug, Clone)]
pub struct BuiltinExpertCaches {
    policy: CachePolicy,
    layers: Vec<ExpertCache>,
}

impl BuiltinExpertCaches {
    /// Caches of `site.capacity` of `site.experts` experts for every layer under `policy`; a static
    /// cache holds each layer's most popular experts, `popular(layer)` giving this GPU's experts'
    /// popularity.
    pub fn new(policy: CachePolicy, site: ExpertCacheSite, popular: impl Fn(u32) -> Vec<f64>) -> Self {
        let layers = (0..site.layers).map(|l| ExpertCache::new(policy, site.experts, site.capacity, &popular(l))).collect();
        BuiltinExpertCaches { policy, layers }
    }
}

impl ExpertCachePolicy for BuiltinExpertCaches {
    #[inline]
    fn contains(&self, layer: u32, expert: u16) -> bool {
        self.layers[layer as usize].contains(expert)
    }

    #[inline]
    fn lookup(&mut self, layer: u32, hits: &[u16], misses: &[u16]) -> Result<()> {
        self.layers[layer as usize].lookup(hits, misses);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("the built-in {:?} expert cache", self.policy).to_lowercase()
    }

    #[inline]
    fn used_and_resident(&self, layer: u32, used: &[f64], hit: &mut Vec<bool>) {
        let cache = &self.layers[layer as usize];
        hit.clear();
        // `&`, not `&&`: both flags are cheap, and random enough to defeat branch prediction.
        hit.extend(used.iter().enumerate().map(|(i, &c)| (c > 0.0) & cache.contains(i as u16)));
    }
}

/// One GPU's expert caches as the runtime holds them: the built-in ones called directly (no dynamic
/// dispatch per layer and expert), or a plugged-in policy behind the trait.
pub enum GpuExpertCaches {
    /// The built-in LRU, LFU or static caches.
    Builtin(BuiltinExpertCaches),
    /// A user's own policy (a Python `ExpertCachePolicy`).
    Plugged(Box<dyn ExpertCachePolicy>),
}

impl GpuExpertCaches {
    /// Whether `expert` (a local id) is resident in `layer`'s cache.
    #[inline]
    pub fn contains(&self, layer: u32, expert: u16) -> bool {
        match self {
            GpuExpertCaches::Builtin(b) => b.layers[layer as usize].contains(expert),
            GpuExpertCaches::Plugged(p) => p.contains(layer, expert),
        }
    }

    /// `layer`'s built-in cache, read flag by flag without a call (`None` for a plugged policy).
    #[inline]
    pub fn builtin_layer(&self, layer: u32) -> Option<&ExpertCache> {
        match self {
            GpuExpertCaches::Builtin(b) => Some(&b.layers[layer as usize]),
            GpuExpertCaches::Plugged(_) => None,
        }
    }

    /// `layer`'s built-in cache, to update (`None` for a plugged policy).
    #[inline]
    pub fn builtin_layer_mut(&mut self, layer: u32) -> Option<&mut ExpertCache> {
        match self {
            GpuExpertCaches::Builtin(b) => Some(&mut b.layers[layer as usize]),
            GpuExpertCaches::Plugged(_) => None,
        }
    }

    /// Whether the caches are the built-in ones.
    #[inline]
    pub fn is_builtin(&self) -> bool {
        matches!(self, GpuExpertCaches::Builtin(_))
    }

    /// See [`ExpertCachePolicy::used_and_resident`].
    #[inline]
    pub fn used_and_resident(&self, layer: u32, used: &[f64], hit: &mut Vec<bool>) {
        match self {
            GpuExpertCaches::Builtin(b) => b.used_and_resident(layer, used, hit),
            GpuExpertCaches::Plugged(p) => p.used_and_resident(layer, used, hit),
        }
    }

    /// See [`ExpertCachePolicy::lookup`].
    #[inline]
    pub fn lookup(&mut self, layer: u32, hits: &[u16], misses: &[u16]) -> Result<()> {
        match self {
            GpuExpertCaches::Builtin(b) => b.lookup(layer, hits, misses),
            GpuExpertCaches::Plugged(p) => p.lookup(layer, hits, misses),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lookup_is_access_then_admit_in_order() {
        // Capacity 2 of 4, LRU: lookups (hits [], misses [0, 1]), then ([0], [2]) evicts 1 (0 was
        // used after it), then ([], [3]) evicts 0.
        let site = ExpertCacheSite { rank: 0, layers: 2, experts: 4, capacity: 2 };
        let mut c = BuiltinExpertCaches::new(CachePolicy::Lru, site, |_| vec![1.0; 4]);
        c.lookup(1, &[], &[0, 1]).unwrap();
        assert!(c.contains(1, 0) && c.contains(1, 1) && !c.contains(0, 0));
        c.lookup(1, &[0], &[2]).unwrap();
        assert!(c.contains(1, 0) && c.contains(1, 2) && !c.contains(1, 1));
        c.lookup(1, &[], &[3]).unwrap();
        assert!(c.contains(1, 2) && c.contains(1, 3) && !c.contains(1, 0));
        assert_eq!(c.describe(), "the built-in lru expert cache");
    }

    #[test]
    fn builtin_static_holds_each_layers_popular_experts() {
        let site = ExpertCacheSite { rank: 0, layers: 2, experts: 4, capacity: 1 };
        let mut c = BuiltinExpertCaches::new(CachePolicy::Static, site, |l| if l == 0 { vec![0.1, 0.9, 0.0, 0.0] } else { vec![0.0, 0.0, 0.0, 1.0] });
        c.lookup(0, &[], &[0, 2]).unwrap();
        assert!(c.contains(0, 1) && !c.contains(0, 0) && !c.contains(0, 2));
        assert!(c.contains(1, 3));
    }
}
