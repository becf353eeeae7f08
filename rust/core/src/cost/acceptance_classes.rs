//! Acceptance that differs by request (`speculative.acceptance_classes`): which class each
//! request belongs to, each class's rates, and the tokens a step emits on average over them.
//!
//! Speculation pays more on some requests than others (code and structured output accept more
//! draft tokens than open-ended chat; EAGLE reports per-dataset rates). A pool's acceptance
//! classes give each class its share of the requests and its own per-position rates. A
//! request's class is drawn once from the run's seed and the request's index alone
//! ([`uniform_at`]): it is the same on every instance and pool that serves the request (its
//! prefill's and its decode's) and does not depend on anything else the run draws. One class
//! (`acceptance_rate`) draws nothing. A workload may instead name a request's class (a trace's
//! `acceptance_class` column, mapped to each pool's classes): a named request is in that class,
//! an unnamed one is drawn.

use std::sync::Arc;

use super::speculative::{expected_tokens_per_step, Speculator};
use crate::error::{Error, Result};
use crate::rng::uniform_at;

/// The name of the draws that assign requests to acceptance classes.
pub const CLASS_STREAM: &str = "speculative acceptance class";

/// A request's entry in a workload's given classes that names no class: it is drawn by share.
pub const DRAWN_CLASS: u8 = u8::MAX;

/// How the run's requests map to a pool's acceptance classes: the classes' cumulative shares
/// and the run's seed, and the classes the workload names.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestClasses {
    seed: u64,
    /// The shares of classes 0..=c summed, for each class c (the last is 1 up to rounding).
    upto: Vec<f64>,
    /// The class the workload gives each request, by request index ([`DRAWN_CLASS`]: none).
    given: Option<Arc<[u8]>>,
}

impl RequestClasses {
    /// The classes of `shares` (in order) in the run seeded with `seed`.
    pub fn new(seed: u64, shares: impl IntoIterator<Item = f64>) -> Self {
        let upto = shares.into_iter().scan(0.0, |sum, s| {
            *sum += s;
            Some(*sum)
        });
        RequestClasses { seed, upto: upto.collect(), given: None }
    }

    /// These classes with the class the workload gives each request (by request index):
    /// `given[r]` is request r's class, or [`DRAWN_CLASS`] to draw it by share. Fails, naming
    /// the first, for an entry that is neither a class of these nor [`DRAWN_CLASS`].
    pub fn with_given(mut self, given: Arc<[u8]>) -> Result<Self> {
        if let Some(r) = given.iter().position(|&c| c != DRAWN_CLASS && c as usize >= self.upto.len()) {
            return Err(Error::config("workload.acceptance_class", format!("request {r} is given class {} of a pool with {} classes", given[r], self.upto.len())));
        }
        self.given = Some(given);
        Ok(self)
    }

    /// How many classes there are.
    pub fn len(&self) -> usize {
        self.upto.len()
    }

    /// Whether there is no class (never, for a built speculator's classes).
    pub fn is_empty(&self) -> bool {
        self.upto.is_empty()
    }

    /// The class of the request at index `req` of the run: the one the workload gives it, else
    /// the first class whose cumulative share exceeds the request's uniform draw (the last class
    /// for a draw the shares' rounding leaves past them); class 0, without a draw, when there is
    /// one class.
    pub fn class_of(&self, req: u32) -> usize {
        if self.upto.len() <= 1 {
            return 0;
        }
        if let Some(&c) = self.given.as_ref().and_then(|g| g.get(req as usize)) {
            if c != DRAWN_CLASS {
                return c as usize;
            }
        }
        self.class_at(uniform_at(self.seed, CLASS_STREAM, req as u64))
    }

    /// The class of a draw `u` in [0, 1): the first whose cumulative share exceeds it (the last
    /// for a draw the shares' rounding leaves past them).
    fn class_at(&self, u: f64) -> usize {
        self.upto.iter().position(|&c| u < c).unwrap_or(self.upto.len() - 1)
    }
}

/// A decode's draft-token cap by its acceptance class: each class's cap and which class each
/// request is in (what adaptive verification grants when the classes verify different numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassCaps {
    /// Requests to classes.
    pub classes: Arc<RequestClasses>,
    /// The most draft tokens a decode of each class proposes in the next step.
    pub caps: Vec<u32>,
}

impl ClassCaps {
    /// The cap of the request at index `req`.
    pub fn of(&self, req: u32) -> u32 {
        self.caps[self.classes.class_of(req)]
    }
}

impl Speculator {
    /// How many acceptance classes there are (1 for `acceptance_rate`).
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Class `c`'s acceptance rate at each draft position (a tree's levels) given the earlier
    /// ones were accepted.
    pub fn class_rates(&self, c: usize) -> &[f64] {
        &self.classes[c].1
    }

    /// The most draft tokens a request of class `c` proposes a step.
    pub fn class_k(&self, c: usize) -> u32 {
        self.class_k[c]
    }

    /// Whether some class drafts fewer than k tokens a step (its decodes' grants are capped).
    pub fn caps_by_class(&self) -> bool {
        self.class_k.iter().any(|&kc| kc < self.k())
    }

    /// The draft positions (a tree's levels): k for a chain.
    pub fn positions(&self) -> usize {
        self.classes[0].1.len()
    }

    /// The run's requests mapped to these classes, in the run seeded with `seed`.
    pub fn request_classes(&self, seed: u64) -> RequestClasses {
        RequestClasses::new(seed, self.classes.iter().map(|(share, _)| *share))
    }

    /// The tokens a step of `depth` draft positions emits per sequence, over the classes by
    /// their shares: [`expected_tokens_per_step`] of the one class's rates for one class.
    pub fn expected_tokens(&self, depth: u32) -> f64 {
        self.classes.iter().map(|(share, rates)| share * expected_tokens_per_step(&rates[..depth as usize])).sum()
    }

    /// The class of each of `n` decodes apportioned by the classes' shares (decode i at the
    /// quantile (i + 1/2) / n): a steady batch's mix, for an estimate.
    pub fn apportioned_classes(&self, n: usize) -> Vec<usize> {
        let classes = self.request_classes(0);
        (0..n).map(|i| classes.class_at((i as f64 + 0.5) / n as f64)).collect()
    }
}

#[cfg(test)]
#[path = "acceptance_classes_tests.rs"]
mod tests;
