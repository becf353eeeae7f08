//! Weights kept outside HBM (host DRAM or flash) and streamed in before the layers that need them.
//!
//! The model follows "LLM in a flash" (Alizadeh et al., 2024): a fraction of the decoder layers
//! keeps its weights in host DRAM or on NVMe flash; before such a layer runs, its attention weights
//! and a fraction of its FFN weights (the neurons a sparsity predictor selects) are copied to the
//! GPU, through the host link (PCIe) and, from flash, first through the drive. A DRAM cache can hold
//! part of the flash-resident weights. Flash throughput depends on the read size: with `queue_depth`
//! reads of `read_chunk_kb` in flight, a drive delivers `min(bandwidth, iops x chunk,
//! queue_depth x chunk / latency)`, which is why bundling rows and columns into larger reads pays.
//! When `overlap` is on, the next layer streams while the current one computes, so only the part of
//! the fetch that outlasts a layer's compute stalls the iteration.

use crate::error::{Error, Result};
use crate::hardware::{MAX_LATENCY, MIN_BANDWIDTH};
use serde::{Deserialize, Serialize};

/// Where offloaded weights live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Host DRAM: fetched over the host link.
    Dram,
    /// NVMe flash: read from the drive, then over the host link.
    Flash,
}

/// A flash drive's read performance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlashSpec {
    /// Catalogue name.
    pub name: String,
    /// Sequential read bandwidth, bytes/s.
    pub read_bandwidth: f64,
    /// Latency of one read, seconds.
    pub latency: f64,
    /// Random-read operations per second, if the drive's datasheet gives it.
    #[serde(default)]
    pub iops: Option<f64>,
}

/// The fastest drive read bandwidth accepted, bytes/s (10 TB/s: ~700x a PCIe 5 NVMe drive).
pub const MAX_DRIVE_BANDWIDTH: f64 = 1e13;

/// Checks the drive of a flash tier configured under `section` (e.g. `offload`, `experts`): read
/// bandwidth between [`MIN_BANDWIDTH`] and [`MAX_DRIVE_BANDWIDTH`], latency at most
/// [`MAX_LATENCY`], IOPS at least 1 when given, a queue and a read size.
pub fn validate_drive(section: &str, flash: Option<&FlashSpec>, queue_depth: u32, read_chunk_bytes: u64) -> Result<()> {
    let f = flash.ok_or_else(|| Error::config(format!("{section}.storage"), "the flash tier needs a drive"))?;
    let bad = |field: &str, allowed: String, got: f64| Err(Error::config(format!("{section}.storage"), format!("{}: {field} must be {allowed}, got {got:?}", f.name)));
    if !(MIN_BANDWIDTH..=MAX_DRIVE_BANDWIDTH).contains(&f.read_bandwidth) {
        return bad("read_bandwidth", format!("between {MIN_BANDWIDTH:e} and {MAX_DRIVE_BANDWIDTH:e} bytes/s"), f.read_bandwidth);
    }
    if !(0.0..=MAX_LATENCY).contains(&f.latency) {
        return bad("latency", format!("between 0 and {MAX_LATENCY} s"), f.latency);
    }
    if let Some(iops) = f.iops.filter(|v| !(v.is_finite() && *v >= 1.0)) {
        return bad("iops", "a finite number of reads per second, at least 1".into(), iops);
    }
    if queue_depth == 0 || read_chunk_bytes == 0 {
        return Err(Error::config(format!("{section}.queue_depth"), "queue_depth and read_chunk_kb must be positive"));
    }
    Ok(())
}

/// Bytes in `kib` KiB, truncated to whole bytes (a scenario's `read_chunk_kb`).
pub fn kib_to_bytes(kib: f64) -> u64 {
    (kib * 1024.0) as u64
}

/// Bytes in `gb` decimal GB, truncated to whole bytes (a scenario's `capacity_gb`).
pub fn gb_to_bytes(gb: f64) -> u64 {
    (gb * 1e9) as u64
}

/// Checks an optional `capacity_gb` configured under `section`: positive and finite when set.
pub fn validate_capacity(section: &str, capacity_gb: Option<f64>) -> Result<()> {
    match capacity_gb {
        Some(gb) if !(gb.is_finite() && gb > 0.0) => Err(Error::config(format!("{section}.capacity_gb"), format!("must be a positive number of GB, got {gb}"))),
        _ => Ok(()),
    }
}

impl Tier {
    /// This tier's capacity per GPU when the scenario sets none, GB (a DGX H100's): 256 of DRAM,
    /// 3840 of flash.
    pub fn default_capacity_gb(self) -> f64 {
        match self {
            Tier::Dram => 256.0,
            Tier::Flash => 3840.0,
        }
    }
}

impl FlashSpec {
    /// Bytes per second the drive delivers for reads of `chunk` bytes with `queue_depth` in flight:
    /// `min(read_bandwidth, iops x chunk, queue_depth x chunk / latency)`.
    pub fn throughput(&self, queue_depth: u32, chunk: u64) -> f64 {
        let chunk = chunk as f64;
        let mut bw = self.read_bandwidth;
        if self.latency > 0.0 {
            bw = bw.min(queue_depth as f64 * chunk / self.latency);
        }
        if let Some(iops) = self.iops {
            bw = bw.min(iops * chunk);
        }
        bw
    }
}

/// Which weights are offloaded and how they are streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffloadSpec {
    /// Tier holding the offloaded weights.
    pub tier: Tier,
    /// Fraction of the decoder layers whose weights are offloaded.
    pub layer_fraction: f64,
    /// Fraction of an offloaded layer's FFN weights fetched per iteration (1 = all; "LLM in a flash"
    /// loads only the neurons predicted active).
    #[serde(default = "one")]
    pub ffn_load_fraction: f64,
    /// With flash, the fraction of offloaded weights served from a DRAM cache instead.
    #[serde(default)]
    pub dram_cache_fraction: f64,
    /// Keep the offloaded layers' attention weights in HBM and stream only their FFN neurons, as
    /// "LLM in a flash" keeps attention in memory (about a third of a dense model's weights).
    #[serde(default)]
    pub resident_attention: bool,
    /// Stream the next layer's weights while the current layer computes.
    #[serde(default = "yes")]
    pub overlap: bool,
    /// The drive, for the flash tier.
    #[serde(default)]
    pub flash: Option<FlashSpec>,
    /// Reads in flight on the drive.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Size of one read from flash, KiB.
    #[serde(default = "default_chunk_kb")]
    pub read_chunk_kb: f64,
    /// Capacity of the tier available to one GPU, GB (none: the tier's
    /// [`default_capacity_gb`](Tier::default_capacity_gb)).
    #[serde(default)]
    pub capacity_gb: Option<f64>,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

fn default_queue_depth() -> u32 {
    32
}

fn default_chunk_kb() -> f64 {
    64.0
}

impl OffloadSpec {
    /// Checks the fractions and that the flash tier names a drive.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("layer_fraction", self.layer_fraction), ("ffn_load_fraction", self.ffn_load_fraction), ("dram_cache_fraction", self.dram_cache_fraction)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::config(format!("offload.{name}"), format!("must be in [0, 1], got {v}")));
            }
        }
        validate_capacity("offload", self.capacity_gb)?;
        if self.tier == Tier::Flash {
            validate_drive("offload", self.flash.as_ref(), self.queue_depth, self.read_chunk_bytes())?;
        }
        Ok(())
    }

    /// Size of one read from flash, bytes.
    pub fn read_chunk_bytes(&self) -> u64 {
        kib_to_bytes(self.read_chunk_kb)
    }

    /// Capacity of the tier available to one GPU, bytes.
    pub fn capacity_bytes(&self) -> u64 {
        gb_to_bytes(self.capacity_gb.unwrap_or(self.tier.default_capacity_gb()))
    }

    /// Bytes per second the drive delivers for reads of `read_chunk_kb` at `queue_depth`.
    pub fn flash_throughput(&self) -> f64 {
        self.flash.as_ref().map_or(0.0, |f| f.throughput(self.queue_depth, self.read_chunk_bytes()))
    }

    /// Seconds to bring `bytes` of one layer's weights to one GPU over a host link of
    /// `host_bandwidth` bytes/s with `host_latency`.
    pub fn fetch_seconds(&self, bytes: f64, host_bandwidth: f64, host_latency: f64) -> f64 {
        let over_pcie = host_latency + bytes / host_bandwidth;
        match self.tier {
            Tier::Dram => over_pcie,
            Tier::Flash => {
                // Flash reads and PCIe copies pipeline: the slower stage sets the pace.
                let from_flash = bytes * (1.0 - self.dram_cache_fraction);
                let latency = self.flash.as_ref().map_or(0.0, |f| f.latency);
                let flash = if from_flash > 0.0 { latency + from_flash / self.flash_throughput() } else { 0.0 };
                over_pcie.max(flash)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tier: Tier) -> OffloadSpec {
        OffloadSpec {
            tier,
            layer_fraction: 1.0,
            ffn_load_fraction: 1.0,
            dram_cache_fraction: 0.0,
            resident_attention: false,
            overlap: false,
            flash: Some(FlashSpec { name: "nvme".into(), read_bandwidth: 7e9, latency: 80e-6, iops: None }),
            queue_depth: 32,
            read_chunk_kb: 64.0,
            capacity_gb: Some(1e4),
        }
    }

    #[test]
    fn larger_reads_raise_flash_throughput_up_to_the_drive() {
        let mut s = spec(Tier::Flash);
        // 32 reads of 4 KiB every 80 us: 1.64 GB/s.
        s.read_chunk_kb = 4.0;
        assert!((s.flash_throughput() - 32.0 * 4096.0 / 80e-6).abs() < 1.0);
        // 64 KiB reads would give 26 GB/s: the drive's 7 GB/s caps it.
        s.read_chunk_kb = 64.0;
        assert_eq!(s.flash_throughput(), 7e9);
        s.flash.as_mut().unwrap().iops = Some(50_000.0);
        assert!((s.flash_throughput() - 50_000.0 * 65536.0).abs() < 1.0);
    }

    #[test]
    fn fetch_time_by_tier_and_cache() {
        let bytes = 400e6;
        let dram = spec(Tier::Dram);
        assert!((dram.fetch_seconds(bytes, 64e9, 5e-6) - (5e-6 + 400e6 / 64e9)).abs() < 1e-12);
        let mut flash = spec(Tier::Flash);
        assert!((flash.fetch_seconds(bytes, 64e9, 5e-6) - (80e-6 + 400e6 / 7e9)).abs() < 1e-12);
        // Half the weights in the DRAM cache: half the flash reads; PCIe still carries all.
        flash.dram_cache_fraction = 0.5;
        assert!((flash.fetch_seconds(bytes, 64e9, 5e-6) - (80e-6 + 200e6 / 7e9)).abs() < 1e-12);
        flash.dram_cache_fraction = 1.0;
        assert!((flash.fetch_seconds(bytes, 64e9, 5e-6) - (5e-6 + 400e6 / 64e9)).abs() < 1e-12);
    }

    #[test]
    fn invalid_specs_are_config_errors() {
        let mut s = spec(Tier::Flash);
        s.layer_fraction = 1.5;
        assert!(matches!(s.validate(), Err(Error::Config { .. })));
        let mut s = spec(Tier::Flash);
        s.flash = None;
        assert!(s.validate().is_err());
        assert!(spec(Tier::Dram).validate().is_ok());
    }

    #[test]
    fn absurd_drive_figures_are_refused_naming_the_field() {
        for (field, drive) in [
            ("read_bandwidth", FlashSpec { read_bandwidth: 1e-300, ..spec(Tier::Flash).flash.unwrap() }),
            ("read_bandwidth", FlashSpec { read_bandwidth: 1e20, ..spec(Tier::Flash).flash.unwrap() }),
            ("latency", FlashSpec { latency: 1e308, ..spec(Tier::Flash).flash.unwrap() }),
            ("iops", FlashSpec { iops: Some(1e-300), ..spec(Tier::Flash).flash.unwrap() }),
            ("iops", FlashSpec { iops: Some(f64::NAN), ..spec(Tier::Flash).flash.unwrap() }),
        ] {
            let Err(Error::Config { path, message }) = validate_drive("offload", Some(&drive), 32, 4096) else { panic!("{field}: accepted") };
            assert_eq!(path, "offload.storage");
            assert!(message.contains(&format!("{field} must be")), "{message}");
        }
        assert!(validate_drive("offload", spec(Tier::Flash).flash.as_ref(), 32, 4096).is_ok());
    }
}
