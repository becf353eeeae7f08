//! Batch schedulers: what the next iteration of an instance runs.
//!
//! A scheduler reads the instance's queues and KV block manager, admits, preempts and picks the
//! tokens of each request for one iteration, and fills a [`Batch`]. It allocates the KV blocks the
//! batch needs, so a batch it returns always fits.

mod vllm;

pub use vllm::VllmScheduler;

use crate::cost::BatchShape;
use crate::error::{Error, Result};
use crate::kv::BlockManager;
use crate::request::{Request, Status};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One request's share of an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// Request index.
    pub req: u32,
    /// Tokens it computes in this iteration (1 for a decode).
    pub tokens: u32,
}

/// What one iteration runs.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Requests and their tokens.
    pub items: Vec<Item>,
    /// The cost model's summary of the batch.
    pub shape: BatchShape,
    /// Requests preempted while forming the batch.
    pub preempted: u32,
}

impl Batch {
    /// Empties the batch for reuse.
    pub fn clear(&mut self) {
        self.items.clear();
        self.shape = BatchShape::default();
        self.preempted = 0;
    }

    /// Adds `tokens` of `req` to the batch and to its shape.
    pub fn push(&mut self, req_idx: u32, req: &Request, tokens: u32) {
        let samples = req.computed + tokens == req.known_tokens();
        if req.is_decoding() {
            self.shape.add_decode(req.computed as u64 + 1);
        } else {
            self.shape.add_prefill(tokens as u64, req.computed as u64, samples);
        }
        self.items.push(Item { req: req_idx, tokens });
    }
}

/// The request queues of one instance.
#[derive(Debug, Clone, Default)]
pub struct Queues {
    /// Requests without KV, in service order (preempted ones return to the front).
    pub waiting: VecDeque<u32>,
    /// Requests holding KV, oldest admission first.
    pub running: Vec<u32>,
}

/// Preempts `req` by recompute: frees its blocks; it will prefill its prompt and output again.
pub fn preempt_recompute(req: &mut Request, kv: &mut BlockManager) {
    kv.release(req.blocks);
    req.blocks = 0;
    req.computed = 0;
    req.preemptions += 1;
    req.status = Status::Waiting;
}

/// The interface every batch scheduler implements.
pub trait BatchScheduler: Send + Sync {
    /// Forms the next iteration into `batch` (cleared by the caller).
    fn schedule(&mut self, queues: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch);

    /// Why a request can never run on this instance, if so (checked on arrival).
    fn reject_reason(&self, req: &Request) -> Option<String>;

    /// Most tokens one iteration may hold (sizes the activation reserve).
    fn max_batch_tokens(&self) -> u32;

    /// Most sequences one iteration may hold.
    fn max_batch_seqs(&self) -> u32;
}

/// A batch scheduler chosen by `kind` in the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum SchedulerConfig {
    /// vLLM-style continuous batching: prefill first, then decodes, preemption by recompute.
    #[serde(rename = "vllm")]
    Vllm {
        /// Most sequences in one iteration.
        max_num_seqs: u32,
        /// Most tokens in one iteration.
        max_num_batched_tokens: u32,
    },
}

impl SchedulerConfig {
    /// Builds the scheduler.
    pub fn build(&self) -> Result<Box<dyn BatchScheduler>> {
        match *self {
            SchedulerConfig::Vllm { max_num_seqs, max_num_batched_tokens } => {
                if max_num_seqs == 0 {
                    return Err(Error::config("scheduler.max_num_seqs", "must be at least 1"));
                }
                if max_num_batched_tokens == 0 {
                    return Err(Error::config("scheduler.max_num_batched_tokens", "must be at least 1"));
                }
                Ok(Box::new(VllmScheduler::new(max_num_seqs, max_num_batched_tokens)))
            }
        }
    }
}
