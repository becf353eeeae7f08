//! Links: what one is ([`LinkSpec`]), how they are numbered, and the checks on a network's links
//! and on a flow's path.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One link: a per-direction bandwidth and a latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Name for reports, e.g. `node0-nvlink` or `node1-nic0`.
    pub name: String,
    /// Bandwidth in one direction, bytes/s.
    pub bandwidth: f64,
    /// Latency a flow pays before transferring over this link, seconds.
    pub latency: f64,
}

/// Index of a link in the list given to [`Network::new`](super::Network::new).
pub type LinkId = u32;

/// Checks a network's links: at most [`LinkId::MAX`] of them, each bandwidth positive and each
/// latency non-negative, both finite. Errors name the offending field, e.g. `links.1.bandwidth`.
pub(super) fn validate_links(links: &[LinkSpec]) -> Result<()> {
    if LinkId::try_from(links.len()).is_err() {
        return Err(Error::config("links", format!("at most {} links, got {}", LinkId::MAX, links.len())));
    }
    for (i, link) in links.iter().enumerate() {
        if !(link.bandwidth.is_finite() && link.bandwidth > 0.0) {
            return Err(Error::config(
                format!("links.{i}.bandwidth"),
                format!("must be a positive number of bytes/s, got {}", link.bandwidth),
            ));
        }
        if !(link.latency.is_finite() && link.latency >= 0.0) {
            return Err(Error::config(
                format!("links.{i}.latency"),
                format!("must be a non-negative number of seconds, got {}", link.latency),
            ));
        }
    }
    Ok(())
}

/// Total latency of `path` over `links`, seconds. Errors if the path is empty, names an unknown
/// link or crosses the same link twice.
pub(super) fn path_latency(links: &[LinkSpec], path: &[LinkId]) -> Result<f64> {
    if path.is_empty() {
        return Err(Error::Simulation { message: "a flow needs a path of at least one link".into() });
    }
    let mut latency = 0.0;
    for (i, &link) in path.iter().enumerate() {
        let Some(spec) = links.get(link as usize) else {
            return Err(Error::Simulation {
                message: format!("flow path names link {link}, but the network has {} links", links.len()),
            });
        };
        if path[..i].contains(&link) {
            return Err(Error::Simulation { message: format!("flow path crosses link {link} twice") });
        }
        latency += spec.latency;
    }
    Ok(latency)
}
