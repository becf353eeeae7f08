//! Accelerator specifications used by the cost and memory models.

use serde::{Deserialize, Serialize};

/// One accelerator: peak rates and memory, as printed on its datasheet (dense, no sparsity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Catalogue name, e.g. `h100-sxm`.
    pub name: String,
    /// Peak dense 16-bit tensor throughput, FLOP/s.
    pub peak_flops: f64,
    /// Peak dense FP8 tensor throughput (FP32 accumulate, no sparsity), FLOP/s; 0 when the GPU has
    /// no FP8 tensor cores (then it cannot run FP8 activations).
    #[serde(default)]
    pub fp8_peak_flops: f64,
    /// HBM (device memory) capacity in bytes.
    pub memory_bytes: u64,
    /// HBM bandwidth in bytes/s.
    pub memory_bandwidth: f64,
    /// Per-direction bandwidth of the GPU-to-GPU link used by tensor parallelism, bytes/s
    /// (NVLink where present, otherwise PCIe).
    pub link_bandwidth: f64,
    /// Latency of one step of a collective on that link, seconds.
    pub link_latency: f64,
    /// Per-direction bandwidth of the GPU's network interface to other nodes (InfiniBand/RoCE),
    /// bytes/s; 0 when the GPU has none (then instances cannot span nodes).
    #[serde(default)]
    pub nic_bandwidth: f64,
    /// Latency of one step over the NIC, seconds.
    #[serde(default = "default_host_latency")]
    pub nic_latency: f64,
    /// Per-direction bandwidth of the GPU's link to host memory (PCIe), bytes/s; 0 when unknown.
    #[serde(default)]
    pub host_link_bandwidth: f64,
    /// Latency of a transfer over the host link, seconds.
    #[serde(default = "default_host_latency")]
    pub host_link_latency: f64,
    /// Rated board power (TDP), watts; 0 leaves power and energy unaccounted.
    #[serde(default)]
    pub tdp_watts: f64,
    /// Power drawn while idle, watts.
    #[serde(default)]
    pub idle_watts: f64,
    /// Fraction of the dynamic power (TDP - idle) drawn by memory-bound kernels; compute-bound
    /// kernels draw all of it.
    #[serde(default = "default_memory_bound_activity")]
    pub memory_bound_activity: f64,
    /// How steeply the SM power falls with the SM clock under a power cap: SM dynamic power goes
    /// as `f^dvfs_exponent` (3 when voltage scales with the clock, 1 at the voltage floor); see
    /// [`PowerModel`].
    #[serde(default = "default_dvfs_exponent")]
    pub dvfs_exponent: f64,
    /// Streaming multiprocessors (or compute units); 0 when unknown.
    #[serde(default)]
    pub sm_count: u32,
}

/// The slowest compute peak accepted, FLOP/s (a 1990s workstation reached this).
pub const MIN_PEAK_FLOPS: f64 = 1e9;
/// The slowest memory or link bandwidth accepted where one is required, bytes/s.
pub const MIN_BANDWIDTH: f64 = 1e6;
/// The longest link latency accepted, seconds.
pub const MAX_LATENCY: f64 = 1.0;
/// The fastest compute peak accepted, FLOP/s: 200x a B200's dense FP8 (a larger figure makes
/// every operator free).
pub const MAX_PEAK_FLOPS: f64 = 1e18;
/// The fastest memory or link bandwidth accepted, bytes/s: over 1,000x an HBM3e stack's.
pub const MAX_BANDWIDTH: f64 = 1e16;

impl GpuSpec {
    /// Checks that the datasheet figures are finite and physically meaningful: peaks between
    /// [`MIN_PEAK_FLOPS`] and [`MAX_PEAK_FLOPS`], required bandwidths between [`MIN_BANDWIDTH`] and
    /// [`MAX_BANDWIDTH`] (too low makes one iteration last years, too high makes every operator
    /// free), optional ones 0 or in that range, latencies at most [`MAX_LATENCY`], idle power below
    /// the TDP.
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |field: &str, message: String| Err(crate::error::Error::config(format!("gpu.{field}"), format!("{}: {message}", self.name)));
        if !(MIN_PEAK_FLOPS..=MAX_PEAK_FLOPS).contains(&self.peak_flops) {
            return bad("peak_flops", format!("must be a FLOP/s figure between {MIN_PEAK_FLOPS:e} and {MAX_PEAK_FLOPS:e}, got {:?}", self.peak_flops));
        }
        if !(self.fp8_peak_flops == 0.0 || (MIN_PEAK_FLOPS..=MAX_PEAK_FLOPS).contains(&self.fp8_peak_flops)) {
            return bad("fp8_peak_flops", format!("must be 0 (no FP8 tensor cores) or a FLOP/s figure between {MIN_PEAK_FLOPS:e} and {MAX_PEAK_FLOPS:e}, got {:?}", self.fp8_peak_flops));
        }
        for (field, v, required) in [
            ("memory_bandwidth", self.memory_bandwidth, true),
            ("link_bandwidth", self.link_bandwidth, true),
            ("nic_bandwidth", self.nic_bandwidth, false),
            ("host_link_bandwidth", self.host_link_bandwidth, false),
        ] {
            let ok = (MIN_BANDWIDTH..=MAX_BANDWIDTH).contains(&v) || (!required && v == 0.0);
            if !ok {
                let range = format!("between {MIN_BANDWIDTH:e} and {MAX_BANDWIDTH:e}");
                let allowed = if required { range } else { format!("0 (none) or {range}") };
                return bad(field, format!("must be a finite bandwidth in bytes/s, {allowed}; got {v:?}"));
            }
        }
        for (field, v) in [("link_latency", self.link_latency), ("nic_latency", self.nic_latency), ("host_link_latency", self.host_link_latency)] {
            if !(0.0..=MAX_LATENCY).contains(&v) {
                return bad(field, format!("must be between 0 and {MAX_LATENCY} s, got {v:?}"));
            }
        }
        if !(self.tdp_watts.is_finite() && self.tdp_watts >= 0.0 && self.idle_watts.is_finite() && self.idle_watts >= 0.0) {
            return bad("tdp_watts", format!("tdp_watts and idle_watts must be finite and non-negative, got {:?} and {:?}", self.tdp_watts, self.idle_watts));
        }
        if self.tdp_watts == 0.0 && self.idle_watts > 0.0 {
            // Power is not modelled without a TDP: an idle draw alone would charge idle energy while
            // busy power came out below idle.
            return bad("idle_watts", format!("needs tdp_watts (without it power and energy are not modelled), got {} with tdp_watts 0", self.idle_watts));
        }
        if self.tdp_watts > 0.0 && self.idle_watts >= self.tdp_watts {
            return bad("idle_watts", format!("must be below tdp_watts ({} W), got {}", self.tdp_watts, self.idle_watts));
        }
        if !(0.0..=1.0).contains(&self.memory_bound_activity) {
            return bad("memory_bound_activity", format!("must be in [0, 1], got {:?}", self.memory_bound_activity));
        }
        if !(1.0..=3.0).contains(&self.dvfs_exponent) {
            return bad("dvfs_exponent", format!("must be in [1, 3] (1: voltage at its floor, 3: voltage proportional to the clock), got {:?}", self.dvfs_exponent));
        }
        Ok(())
    }
}

fn default_host_latency() -> f64 {
    5e-6
}

fn default_memory_bound_activity() -> f64 {
    0.3
}

fn default_dvfs_exponent() -> f64 {
    DEFAULT_DVFS_EXPONENT
}

/// The default DVFS exponent: SM dynamic power `~ f^1.6` in the capped range. Dynamic power is
/// `C V^2 f`; with the voltage `V = V0 + k f` the local exponent is `1 + 2 k f / V`: 3 if `V ~ f`,
/// 1 at the voltage floor. 1.6 (about 30% of the voltage tracking the clock near the top of the
/// range) reproduces Splitwise's DGX-H100 profile: at a 70% cap compute-bound kernels run
/// 1/0.75 = 1.33x slower (prompt phase ~1.3x), memory-bound ones (token phase) unchanged.
pub const DEFAULT_DVFS_EXPONENT: f64 = 1.6;

/// The lowest SM clock, as a fraction of the maximum, a power cap may force: datacenter GPUs do not
/// clock below about 15% (the lowest supported graphics clock is 210 of 1410 MHz on the A100 and
/// 345 of 1980 MHz on the H100, `nvidia-smi -q -d SUPPORTED_CLOCKS`), and their drivers refuse
/// power limits far above the cap that would need it (`nvidia-smi -pl` takes 100-400 W on an A100,
/// 200-700 W on an H100 SXM). Below this the model's slowdown would grow without bound as the
/// cap nears idle power.
pub const MIN_CAPPED_CLOCK: f64 = 0.15;

/// The power model of one GPU, optionally capped, and the clock a cap forces (DVFS).
///
/// Uncapped, a compute-bound kernel draws the TDP and a memory-bound one
/// `idle + m (TDP - idle)` (`m` = `memory_bound_activity`: HBM, links and uncore, on clocks a
/// power cap does not touch). Under a cap the GPU lowers the SM clock to `f` (a fraction of its
/// maximum) until the kernel fits. A compute-bound kernel at clock `f` draws
/// `idle + (TDP - idle) (m f + (1 - m) f^a)`: its memory traffic follows its progress (`~ f`),
/// its SM power follows `f V^2` (`~ f^a`, `a` = `dvfs_exponent`). Compute peak scales with `f`, so
/// compute-bound time stretches by `1/f`; memory bandwidth (HBM clock) is unchanged, so
/// memory-bound kernels stretch only when the cap is below their own draw, then in proportion
/// (`m (TDP - idle) / (cap - idle)`: the memory system is throttled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerModel {
    /// Rated power, watts.
    pub tdp: f64,
    /// Idle power, watts.
    pub idle: f64,
    /// Share of dynamic power drawn by memory-bound work.
    pub memory_activity: f64,
    /// Exponent of SM dynamic power in the SM clock.
    pub dvfs_exponent: f64,
    /// The cap, watts (the TDP when uncapped).
    pub cap: f64,
}

impl PowerModel {
    /// The power model of `gpu` under an optional cap (watts per GPU).
    pub fn new(gpu: &GpuSpec, cap: Option<f64>) -> Self {
        let cap = cap.unwrap_or(gpu.tdp_watts);
        PowerModel { tdp: gpu.tdp_watts, idle: gpu.idle_watts, memory_activity: gpu.memory_bound_activity, dvfs_exponent: gpu.dvfs_exponent, cap }
    }

    /// Whether power is modelled at all.
    pub fn enabled(&self) -> bool {
        self.tdp > 0.0
    }

    /// Uncapped draw of a kernel with the given activity (0 = idle, 1 = TDP).
    fn draw(&self, activity: f64) -> f64 {
        self.idle + (self.tdp - self.idle) * activity
    }

    /// The share of the dynamic range the cap leaves, `(cap - idle) / (TDP - idle)`; 1 uncapped.
    fn headroom(&self) -> f64 {
        if !self.enabled() || self.cap >= self.tdp {
            1.0
        } else {
            ((self.cap - self.idle) / (self.tdp - self.idle)).max(f64::MIN_POSITIVE)
        }
    }

    /// The SM clock (fraction of its maximum) at which a compute-bound kernel fits under the cap:
    /// the root of `m f + (1 - m) f^a = headroom` in (0, 1] (bisection; the left side increases).
    pub fn compute_clock(&self) -> f64 {
        let x = self.headroom();
        if x >= 1.0 {
            return 1.0;
        }
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..64 {
            let f = 0.5 * (lo + hi);
            if self.compute_draw_share(f) > x {
                hi = f;
            } else {
                lo = f;
            }
        }
        lo.max(f64::MIN_POSITIVE)
    }

    /// The lowest cap, watts, that leaves compute-bound kernels at least `MIN_CAPPED_CLOCK`.
    pub fn lowest_cap(&self) -> f64 {
        self.idle + self.compute_draw_share(MIN_CAPPED_CLOCK) * (self.tdp - self.idle)
    }

    /// A compute-bound kernel's dynamic draw at SM clock `f`, as a share of `TDP - idle`:
    /// `m f + (1 - m) f^a` (its memory traffic follows its progress, its SM power `f^a`).
    fn compute_draw_share(&self, f: f64) -> f64 {
        let (m, a) = (self.memory_activity, self.dvfs_exponent);
        m * f + (1.0 - m) * f.powf(a)
    }

    /// Time stretch of compute-bound kernels under the cap: 1 / the SM clock that fits.
    pub fn compute_slowdown(&self) -> f64 {
        1.0 / self.compute_clock()
    }

    /// Time stretch of memory-bound kernels under the cap: 1 while the cap is above their draw,
    /// else the ratio of their dynamic draw to what the cap leaves.
    pub fn memory_slowdown(&self) -> f64 {
        let x = self.headroom();
        if x >= self.memory_activity {
            1.0
        } else {
            self.memory_activity / x
        }
    }

    /// Average power of a busy period whose share `compute_share` of time is compute-bound: each
    /// kernel's draw weighted by its time. Uncapped, compute-bound kernels draw TDP and memory-bound
    /// ones `idle + m (TDP - idle)`. Under a cap each kernel is clocked to fit it (`compute_clock`):
    /// compute-bound kernels draw the cap, memory-bound ones their own draw (the cap when that is
    /// lower), so a capped prompt averages below the cap by its memory-bound share.
    pub fn busy_watts(&self, compute_share: f64) -> f64 {
        let share = compute_share.clamp(0.0, 1.0);
        if self.cap >= self.tdp {
            return self.draw(self.memory_activity + (1.0 - self.memory_activity) * share);
        }
        let memory = self.draw(self.memory_activity).min(self.cap);
        share * self.cap + (1.0 - share) * memory
    }
}

impl GpuSpec {
    /// The ridge point of the roofline: FLOPs per byte above which work is compute-bound.
    pub fn ridge_intensity(&self) -> f64 {
        self.peak_flops / self.memory_bandwidth
    }
}

/// A processing-in-memory device attached to a GPU's memory: it computes next to the DRAM, with
/// more internal bandwidth than the GPU sees but far less compute (AttAcc's bank-level HBM-PIM,
/// Duplex's Logic-PIM on the HBM logic die).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PimSpec {
    /// Catalogue name.
    pub name: String,
    /// Peak throughput of the PIM units, FLOP/s.
    pub peak_flops: f64,
    /// Internal bandwidth the PIM units see, bytes/s.
    pub internal_bandwidth: f64,
    /// Fraction of peak reached (both compute and bandwidth).
    #[serde(default = "default_pim_efficiency")]
    pub efficiency: f64,
}

fn default_pim_efficiency() -> f64 {
    0.8
}

impl PimSpec {
    /// Seconds the PIM needs for an operator.
    pub fn seconds(&self, flops: f64, bytes: f64) -> f64 {
        (flops / self.peak_flops).max(bytes / self.internal_bandwidth) / self.efficiency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100(dvfs_exponent: f64) -> GpuSpec {
        GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes: 80_000_000_000, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent, sm_count: 132 }
    }

    #[test]
    fn a_cap_lowers_the_clock_of_compute_bound_kernels_until_they_fit() {
        // 70% of 700 W: headroom (490 - 70) / 630 = 2/3; 0.3 f + 0.7 f^1.6 = 2/3 at f = 0.74992
        // (0.3 x 0.75 + 0.7 x 0.75^1.6 = 0.225 + 0.44178 = 0.66678), so compute-bound kernels
        // run 1.3335x slower; memory-bound ones draw 70 + 0.3 x 630 = 259 W < 490 W: unchanged.
        let pm = PowerModel::new(&h100(DEFAULT_DVFS_EXPONENT), Some(490.0));
        assert!((pm.compute_clock() - 0.74992).abs() < 1e-5, "{}", pm.compute_clock());
        assert!((pm.compute_slowdown() - 1.33348).abs() < 1e-4);
        assert_eq!(pm.memory_slowdown(), 1.0);
        // 600 W: headroom 530/630 = 0.84127, f = 0.88504: 13% slower (10-15% reported).
        let pm = PowerModel::new(&h100(DEFAULT_DVFS_EXPONENT), Some(600.0));
        assert!((pm.compute_slowdown() - 1.12989).abs() < 1e-4);
        // The textbook V ~ f (exponent 3): 0.3 f + 0.7 f^3 = 2/3 at f = 0.83987, 1.19x slower;
        // at the voltage floor (exponent 1) power follows the clock: f = 2/3, 1.5x slower.
        assert!((PowerModel::new(&h100(3.0), Some(490.0)).compute_slowdown() - 1.19066).abs() < 1e-4);
        assert!((PowerModel::new(&h100(1.0), Some(490.0)).compute_slowdown() - 1.5).abs() < 1e-9);
        // Uncapped, or capped at TDP: full clock.
        assert_eq!(PowerModel::new(&h100(DEFAULT_DVFS_EXPONENT), None).compute_slowdown(), 1.0);
        assert_eq!(PowerModel::new(&h100(DEFAULT_DVFS_EXPONENT), Some(700.0)).compute_slowdown(), 1.0);
    }

    #[test]
    fn a_capped_busy_period_draws_the_cap_only_in_its_compute_bound_kernels() {
        // 490 W on an H100, 3/4 of the time compute-bound: the GEMMs are clocked to draw 490 W, the
        // memory-bound quarter draws 70 + 0.3 x 630 = 259 W: 0.75 x 490 + 0.25 x 259 = 432.25 W
        // (the uncapped formula, 70 + 630 x (0.3 + 0.7 x 0.75) = 589.75 W, cut to 490, overstated it).
        let pm = PowerModel::new(&h100(DEFAULT_DVFS_EXPONENT), Some(490.0));
        assert!((pm.busy_watts(0.75) - 432.25).abs() < 1e-9, "{}", pm.busy_watts(0.75));
        assert!((pm.busy_watts(1.0) - 490.0).abs() < 1e-9);
        assert!((pm.busy_watts(0.0) - 259.0).abs() < 1e-9);
        // A cap below the memory-bound draw: every kernel draws the cap.
        assert!((PowerModel::new(&h100(DEFAULT_DVFS_EXPONENT), Some(200.0)).busy_watts(0.4) - 200.0).abs() < 1e-9);
        // Uncapped: the time-weighted draw, 70 + 630 x (0.3 + 0.7 x 0.75).
        assert!((PowerModel::new(&h100(DEFAULT_DVFS_EXPONENT), None).busy_watts(0.75) - 589.75).abs() < 1e-9);
    }

    #[test]
    fn a_cap_below_the_memory_bound_draw_throttles_memory_in_proportion() {
        // 200 W: headroom 130/630 = 0.20635 < 0.3: memory-bound kernels stretch 0.3 / 0.20635 =
        // 1.45385x; compute-bound ones run at f = 0.31685 (3.156x), never faster than memory ones.
        let pm = PowerModel::new(&h100(DEFAULT_DVFS_EXPONENT), Some(200.0));
        assert!((pm.memory_slowdown() - 1.45385).abs() < 1e-4);
        assert!((pm.compute_slowdown() - 3.15604).abs() < 1e-3);
        assert!(pm.compute_slowdown() >= pm.memory_slowdown());
    }

    #[test]
    fn dvfs_exponent_outside_one_to_three_is_refused() {
        for bad in [0.5, 3.5, f64::NAN] {
            let err = h100(bad).validate().unwrap_err().to_string();
            assert!(err.contains("gpu.dvfs_exponent") && err.contains("[1, 3]"), "{err}");
        }
        assert!(h100(1.0).validate().is_ok() && h100(3.0).validate().is_ok());
    }
}
