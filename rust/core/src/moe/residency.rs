//! How one GPU's experts are laid out in memory: the bytes of one expert, the experts cached per
//! layer and the staging buffers, and what that keeps in HBM.

use super::config::ExpertConfig;
use crate::cost::CostModel;

/// How the experts of one GPU are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertResidency {
    /// Bytes of one expert's weights on one GPU.
    pub expert_bytes: f64,
    /// Experts of one layer on one GPU.
    pub experts_per_gpu: u32,
    /// Experts of one layer cached on one GPU.
    pub cached_per_gpu: u32,
    /// Staging buffers (experts) on one GPU.
    pub staging: u32,
    /// MoE layers.
    pub layers: u32,
}

impl ExpertResidency {
    /// The layout `cfg` gives `cost`'s model.
    pub fn new(cfg: &ExpertConfig, cost: &CostModel) -> Self {
        let m = cost.model();
        let ep = cost.ep();
        let experts_per_gpu = m.num_experts / ep;
        let lead = cfg.prefetch.as_ref().map_or(0, |p| p.lead_layers);
        ExpertResidency {
            expert_bytes: cost.expert_bytes_per_gpu(),
            experts_per_gpu,
            cached_per_gpu: cfg.cache.experts_per_layer.div_ceil(ep).min(experts_per_gpu),
            staging: cfg.staging_experts.unwrap_or(experts_per_gpu * (1 + lead)),
            layers: m.moe_layers(),
        }
    }

    /// Bytes of all routed experts on one GPU.
    pub fn all_bytes(&self) -> u64 {
        (self.expert_bytes * (self.layers * self.experts_per_gpu) as f64).round() as u64
    }

    /// Bytes of routed experts one GPU keeps in HBM when they are offloaded.
    pub fn resident_bytes(&self) -> u64 {
        let slots = (self.layers * self.cached_per_gpu + self.staging) as f64;
        ((self.expert_bytes * slots).round() as u64).min(self.all_bytes())
    }
}
