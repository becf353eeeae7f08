//! Chunked-prefill schedulers: Sarathi-Serve's stall-free batching and Sarathi's decode-maximal batching.
//!
//! **Sarathi-Serve** (`sarathi-serve`, Agrawal et al., OSDI 2024): every iteration first takes one
//! token of every running decode (decodes are never paused for a prefill: "stall-free"), then
//! fills what is left of the per-iteration `token_budget` with prefill chunks, first of requests
//! whose prefill is already under way, then of newly admitted ones. Several chunks can share an
//! iteration.
//!
//! **Sarathi** (`sarathi`, Agrawal et al., 2023): decode-maximal batching: all running decodes plus
//! at most one prefill chunk of `chunk_size` tokens per iteration.
//!
//! Both admit in order while `max_num_seqs` and the KV cache (with the watermark) allow, allocating
//! a request's whole prompt at admission (as Sarathi-Serve's block manager does), and when a
//! decode needs a block that is not there preempt the most recently admitted request by
//! recompute, as vLLM does.

use super::{DraftGrant, grant_drafts, grow_for_decode, preempt_recompute, try_admit, Batch, Scheduler, Queues};
use crate::kv::BlockManager;
use crate::request::Request;

/// Which of the two schedulers, i.e. how prefill chunks are chosen each iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SarathiVariant {
    /// Sarathi-Serve: fill the token budget left after the decodes with as many chunks as fit.
    SarathiServe(u32),
    /// Sarathi: one chunk of at most this many tokens, whatever the decodes.
    Sarathi(u32),
}

/// Sarathi and Sarathi-Serve: chunked prefill with decodes first.
#[derive(Debug, Clone)]
pub struct SarathiScheduler {
    policy: SarathiVariant,
    max_num_seqs: u32,
    draft: DraftGrant,
    preempted: Vec<u32>,
}

impl SarathiScheduler {
    /// A scheduler with the given chunk policy and sequence limit.
    pub fn new(policy: SarathiVariant, max_num_seqs: u32) -> Self {
        SarathiScheduler { policy, max_num_seqs, draft: DraftGrant::default(), preempted: Vec::new() }
    }

    /// Gives `tokens` more tokens of `req` their KV blocks; false when the cache lacks them.
    fn grow(req: &mut Request, tokens: u32, kv: &mut BlockManager) -> bool {
        let need = kv.growth(req, req.computed as u64 + tokens as u64);
        if !kv.can_grow(need) {
            return false;
        }
        kv.allocate(need);
        req.blocks += need;
        true
    }

    /// One decode token for every running decode, preempting the newest when blocks run out.
    fn schedule_decodes(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        let mut i = 0;
        while i < q.running.len() {
            let idx = q.running[i];
            if !reqs[idx as usize].is_decoding() {
                i += 1;
                continue;
            }
            let preempted = &mut self.preempted;
            let grown = grow_for_decode(q, reqs, kv, batch, idx, |v, r, kv, _| {
                preempt_recompute(r, kv);
                preempted.push(v);
            });
            if !grown {
                break;
            }
            batch.push(idx, &reqs[idx as usize], 1);
            i += 1;
        }
    }

    /// Prefill chunks within `budget` tokens: running partial prefills first, then admissions.
    fn schedule_chunks(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch, mut budget: u32, max_chunks: u32) {
        let mut chunks = 0;
        let mut i = 0;
        while i < q.running.len() && budget > 0 && chunks < max_chunks {
            let idx = q.running[i];
            let r = &mut reqs[idx as usize];
            if r.pending_tokens() > 1 || (r.generated == 0 && r.pending_tokens() > 0) {
                let n = r.pending_tokens().min(budget);
                if Self::grow(r, n, kv) {
                    batch.push(idx, r, n);
                    budget -= n;
                    chunks += 1;
                }
            }
            i += 1;
        }
        while budget > 0 && chunks < max_chunks {
            let Some(&idx) = q.waiting.front() else { break };
            if q.running.len() as u32 >= self.max_num_seqs {
                break;
            }
            // The whole prompt's blocks at admission, as Sarathi-Serve's block manager allocates
            // them ("the memory for all these prefills has already been allocated"): a prompt
            // admitted on its first chunk alone could stall half-prefilled, holding its blocks.
            if !try_admit(q, reqs, kv, |r| Some(r.computed as u64 + r.pending_tokens() as u64)) {
                break;
            }
            let r = &reqs[idx as usize];
            let n = r.pending_tokens().min(budget);
            batch.push(idx, r, n);
            budget -= n;
            chunks += 1;
        }
    }
}

impl Scheduler for SarathiScheduler {
    fn schedule(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        self.preempted.clear();
        self.schedule_decodes(q, reqs, kv, batch);
        for &v in self.preempted.iter() {
            q.waiting.push_front(v);
        }
        // Speculating decodes verify 1 + their draft tokens: Sarathi-Serve's budget counts them
        // all; Sarathi's chunk does not count decodes at all.
        let decodes = batch.items.len() as u32;
        match self.policy {
            SarathiVariant::SarathiServe(b) => {
                let drafts = grant_drafts(batch, 0, reqs, kv, &self.draft, b.saturating_sub(decodes));
                self.schedule_chunks(q, reqs, kv, batch, b.saturating_sub(decodes + drafts), u32::MAX)
            }
            SarathiVariant::Sarathi(c) => {
                grant_drafts(batch, 0, reqs, kv, &self.draft, u32::MAX);
                self.schedule_chunks(q, reqs, kv, batch, c, 1)
            }
        }
    }

    fn set_draft_grant(&mut self, grant: DraftGrant) {
        self.draft = grant;
    }

    fn reject_reason(&self, _req: &Request) -> Option<String> {
        None
    }

    fn max_batch_tokens(&self) -> u32 {
        match self.policy {
            SarathiVariant::SarathiServe(b) => b,
            SarathiVariant::Sarathi(c) => c + self.max_num_seqs,
        }
    }

    fn max_batch_seqs(&self) -> u32 {
        self.max_num_seqs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Status;
    use crate::scheduler::testkit::{finish, setup};
    use crate::scheduler::Item;

    #[test]
    fn sarathi_serve_chunks_prompts_under_the_budget_and_never_pauses_decodes() {
        // Budget 512: a 1000-token prompt goes in chunks of 512, then 488 (+ the first request's
        // decode once it has one), and a second prompt shares the leftover budget.
        let (mut reqs, mut q) = setup(&[1000, 300], 5);
        let mut kv = BlockManager::new(1000, 16, 0);
        let mut s = SarathiScheduler::new(SarathiVariant::SarathiServe(512), 64);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.items, vec![Item { req: 0, tokens: 512, draft: 0 }]);
        assert_eq!(b.shape.sampled, 0, "a partial prefill samples nothing");
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.items, vec![Item { req: 0, tokens: 488, draft: 0 }, Item { req: 1, tokens: 24, draft: 0 }]);
        assert_eq!(b.shape.prefill_pairs, 488.0 * (512.0 + 489.0 / 2.0) + 24.0 * (12.5));
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        // Request 0 decodes first; request 1's prefill continues in the 511 tokens left.
        assert_eq!(b.items, vec![Item { req: 0, tokens: 1, draft: 0 }, Item { req: 1, tokens: 276, draft: 0 }]);
        assert_eq!(b.shape.decode_seqs, 1);
        assert!(b.shape.tokens() <= 512);
    }

    #[test]
    fn admission_allocates_the_whole_prompt() {
        // Budget 32: request 1's 100-token prompt starts with a 16-token chunk but holds its 7
        // blocks from admission, so it can never stall half-prefilled for want of blocks (it held
        // 1 block and grew per chunk, then waited holding them, as Sarathi-Serve never does).
        let (mut reqs, mut q) = setup(&[16, 100], 5);
        let mut kv = BlockManager::new(20, 16, 0);
        let mut s = SarathiScheduler::new(SarathiVariant::SarathiServe(32), 8);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.items, vec![Item { req: 0, tokens: 16, draft: 0 }, Item { req: 1, tokens: 16, draft: 0 }]);
        assert_eq!((reqs[0].blocks, reqs[1].blocks, kv.used()), (1, 7, 8));
        // A prompt whose blocks are not all free waits in the queue.
        let (mut reqs, mut q) = setup(&[16, 100], 5);
        let mut kv = BlockManager::new(7, 16, 0);
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b.clone());
        assert_eq!((q.running.len(), q.waiting.len()), (1, 1));
    }

    #[test]
    fn sarathi_takes_one_chunk_and_all_decodes() {
        let (mut reqs, mut q) = setup(&[100, 100, 700], 50);
        let mut kv = BlockManager::new(1000, 16, 0);
        let mut s = SarathiScheduler::new(SarathiVariant::Sarathi(256), 64);
        let mut b = Batch::default();
        for _ in 0..2 {
            s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
            finish(&b, &mut reqs, &mut q, &mut kv);
            b.clear();
        }
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        // Two decodes, then one 256-token chunk of the long prompt.
        assert_eq!(b.items, vec![Item { req: 0, tokens: 1, draft: 0 }, Item { req: 1, tokens: 1, draft: 0 }, Item { req: 2, tokens: 256, draft: 0 }]);
    }

    #[test]
    fn kv_pressure_preempts_the_newest_by_recompute() {
        // Each request fits alone (16 + 10 - 1 tokens: 2 blocks); together they need 4 of 3.
        let (mut reqs, mut q) = setup(&[16, 16], 10);
        let mut kv = BlockManager::new(3, 16, 0);
        let mut s = SarathiScheduler::new(SarathiVariant::SarathiServe(64), 8);
        let mut b = Batch::default();
        let mut preempted = 0;
        for _ in 0..300 {
            b.clear();
            s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
            preempted += b.preempted;
            assert_eq!(reqs.iter().map(|r| r.blocks).sum::<u32>(), kv.used());
            assert!(b.shape.tokens() <= 64);
            if b.items.is_empty() {
                break;
            }
            finish(&b, &mut reqs, &mut q, &mut kv);
        }
        assert!(preempted > 0);
        assert!(reqs.iter().all(|r| r.status == Status::Finished && r.generated == 10));
    }
}
