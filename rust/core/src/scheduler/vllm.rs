//! vLLM-style continuous batching (vLLM v0's default scheduler, chunked prefill off).
//!
//! Each iteration is either all prefills or all decodes. Waiting requests are admitted in order
//! while the token budget, the sequence limit and the KV cache (keeping a 1% watermark free)
//! allow; if any is admitted the iteration prefills them. Otherwise every running request decodes
//! one token; when a decode needs a KV block and none is free, the most recently admitted running
//! request is preempted (possibly the one asking). By recompute (the default), preempted requests
//! go back to the front of the waiting queue in their admission order. With swap space, the victim's
//! KV blocks move to host memory instead (falling back to recompute when the host is full); while
//! any request is swapped out no new prefill is admitted, and once an iteration preempts nothing,
//! swapped requests come back in order (while blocks allow) and decode in that same iteration.

use super::{DraftGrant, grant_drafts, grow_for_decode, preempt_recompute, preempt_swap, try_admit, Batch, Scheduler, Queues};
use crate::kv::BlockManager;
use crate::request::{Request, Status};

/// Prefill-first continuous batching with `max_num_seqs` and `max_num_batched_tokens`.
#[derive(Debug, Clone)]
pub struct VllmScheduler {
    max_num_seqs: u32,
    max_num_batched_tokens: u32,
    draft: DraftGrant,
    preempted: Vec<u32>,
    swapped_out: Vec<u32>,
    host: Option<BlockManager>,
}

impl VllmScheduler {
    /// A scheduler with the given limits.
    pub fn new(max_num_seqs: u32, max_num_batched_tokens: u32) -> Self {
        VllmScheduler { max_num_seqs, max_num_batched_tokens, draft: DraftGrant::default(), preempted: Vec::new(), swapped_out: Vec::new(), host: None }
    }

    /// Preempts by swapping to `host_blocks` blocks of host memory (0 keeps recompute).
    pub fn with_swap_space(mut self, host_blocks: u32) -> Self {
        self.host = (host_blocks > 0).then(|| BlockManager::new(host_blocks, 1, 0));
        self
    }

    /// Host blocks in use (swapped-out KV).
    pub fn host_blocks_used(&self) -> u32 {
        self.host.as_ref().map_or(0, |h| h.used())
    }

    fn preempt(&mut self, req: &mut Request, kv: &mut BlockManager, batch: &mut Batch) -> bool {
        let blocks = req.blocks;
        if let Some(host) = self.host.as_mut() {
            if preempt_swap(req, kv, host) {
                batch.swap_out_blocks += blocks;
                return true;
            }
        }
        preempt_recompute(req, kv);
        false
    }

    fn schedule_swapped(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        let Some(host) = self.host.as_mut() else { return };
        while let Some(&idx) = q.swapped.front() {
            if q.running.len() as u32 >= self.max_num_seqs {
                break;
            }
            let r = &mut reqs[idx as usize];
            let need = kv.growth(r, r.computed as u64 + 1);
            if !kv.can_admit(need) {
                break;
            }
            q.swapped.pop_front();
            host.release(r.host_blocks);
            batch.swap_in_blocks += r.host_blocks;
            r.host_blocks = 0;
            kv.allocate(need);
            r.blocks = need;
            r.status = Status::Running;
            q.running.push(idx);
            batch.push(idx, r, 1);
        }
    }

    fn schedule_prefills(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        let mut tokens = 0u32;
        while let Some(&idx) = q.waiting.front() {
            if q.running.len() as u32 >= self.max_num_seqs {
                break;
            }
            let budget = self.max_num_batched_tokens;
            let first = batch.items.is_empty();
            // A recomputed request may exceed the budget; it then runs as the only prefill.
            let admitted = try_admit(q, reqs, kv, |r| {
                let n = r.pending_tokens();
                (first || tokens + n <= budget).then(|| r.computed as u64 + n as u64)
            });
            if !admitted {
                break;
            }
            let r = &reqs[idx as usize];
            let n = r.pending_tokens();
            tokens += n;
            batch.push(idx, r, n);
        }
    }

    fn schedule_decodes(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        self.preempted.clear();
        self.swapped_out.clear();
        let mut i = 0;
        while i < q.running.len() {
            let idx = q.running[i];
            let grown = grow_for_decode(q, reqs, kv, batch, idx, |v, r, kv, b| {
                if self.preempt(r, kv, b) {
                    self.swapped_out.push(v);
                } else {
                    self.preempted.push(v);
                }
            });
            if !grown {
                break;
            }
            batch.push(idx, &reqs[idx as usize], 1);
            i += 1;
        }
        // Victims were taken newest first; the front of the queue gets the oldest, and swapped
        // victims queue up oldest first.
        for &v in self.preempted.iter() {
            q.waiting.push_front(v);
        }
        q.swapped.extend(self.swapped_out.iter().rev());
    }
}

impl Scheduler for VllmScheduler {
    fn release_host(&mut self, req: &mut Request) {
        if let Some(host) = self.host.as_mut() {
            host.release(req.host_blocks);
        }
        req.host_blocks = 0;
    }

    fn schedule(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        if q.swapped.is_empty() {
            self.schedule_prefills(q, reqs, kv, batch);
        }
        if batch.items.is_empty() {
            self.schedule_decodes(q, reqs, kv, batch);
            if batch.preempted == 0 {
                self.schedule_swapped(q, reqs, kv, batch);
            }
            // Speculating decodes verify 1 + their draft tokens, all within the token budget.
            let decodes = batch.items.len() as u32;
            grant_drafts(batch, 0, reqs, kv, &self.draft, self.max_num_batched_tokens.saturating_sub(decodes));
        }
    }

    fn set_draft_grant(&mut self, grant: DraftGrant) {
        self.draft = grant;
    }

    fn schedule_admissions(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) -> bool {
        if q.swapped.is_empty() {
            self.schedule_prefills(q, reqs, kv, batch);
        }
        true
    }

    fn admits_alone(&self) -> bool {
        true
    }

    fn reject_reason(&self, req: &Request) -> Option<String> {
        if req.prompt > self.max_num_batched_tokens {
            return Some(format!("prompt of {} tokens exceeds max_num_batched_tokens={}", req.prompt, self.max_num_batched_tokens));
        }
        None
    }

    fn max_batch_tokens(&self) -> u32 {
        self.max_num_batched_tokens
    }

    fn max_batch_seqs(&self) -> u32 {
        self.max_num_seqs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testkit::{finish, setup};

    #[test]
    fn prefill_first_then_decodes() {
        let (mut reqs, mut q) = setup(&[100, 200, 300], 3);
        let mut kv = BlockManager::new(1000, 16, 0);
        let mut s = VllmScheduler::new(8, 350);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        // 100 + 200 fit the 350-token budget; 300 more would not.
        assert_eq!(b.items.iter().map(|i| (i.req, i.tokens)).collect::<Vec<_>>(), vec![(0, 100), (1, 200)]);
        assert_eq!(b.shape.prefill_tokens, 300);
        assert_eq!(kv.used(), 7 + 13);
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        // The waiting request is prefilled before the running ones decode.
        assert_eq!(b.items, vec![super::super::Item { req: 2, tokens: 300, draft: 0 }]);
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.shape.decode_seqs, 3);
        assert_eq!(b.shape.decode_kv_tokens, 101 + 201 + 301);
    }

    #[test]
    fn max_num_seqs_limits_admission() {
        let (mut reqs, mut q) = setup(&[10, 10, 10, 10], 5);
        let mut kv = BlockManager::new(1000, 16, 0);
        let mut s = VllmScheduler::new(2, 10_000);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.items.len(), 2);
        assert_eq!(q.waiting.len(), 2);
    }

    #[test]
    fn kv_accounting_under_preemption() {
        // 3 requests of 16-token prompts, blocks of 16, 7 blocks: each needs a second block at its
        // first decode, a third after 16 more tokens. Capacity forces preemption of the newest.
        let (mut reqs, mut q) = setup(&[16, 16, 16], 40);
        let mut kv = BlockManager::new(7, 16, 0);
        let mut s = VllmScheduler::new(8, 1000);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(kv.used(), 3);
        finish(&b, &mut reqs, &mut q, &mut kv);
        let mut preemptions = 0;
        for _ in 0..200 {
            b.clear();
            s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
            preemptions += b.preempted;
            // Invariant: blocks held by requests equal blocks in use, never above capacity.
            let held: u32 = reqs.iter().map(|r| r.blocks).sum();
            assert_eq!(held, kv.used());
            assert!(kv.used() <= kv.total());
            for r in &reqs {
                if r.status == Status::Running {
                    assert!(r.blocks >= kv.blocks_for(r.computed as u64));
                } else {
                    assert_eq!(r.blocks, 0);
                }
            }
            if b.items.is_empty() {
                break;
            }
            finish(&b, &mut reqs, &mut q, &mut kv);
        }
        assert!(preemptions >= 1, "capacity must force a preemption");
        assert!(reqs.iter().all(|r| r.status == Status::Finished && r.generated == 40));
        assert_eq!(kv.used(), 0);
        // The newest request is the victim: request 2 is preempted, request 0 never.
        assert_eq!(reqs[0].preemptions, 0);
        assert!(reqs[2].preemptions >= 1);
    }

    #[test]
    fn preempted_request_recomputes_prompt_and_output() {
        let (mut reqs, mut q) = setup(&[16, 16], 10);
        let mut kv = BlockManager::new(3, 16, 0);
        let mut s = VllmScheduler::new(8, 1000);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        // Both need a second block; only one is free: request 1 (newest) is preempted.
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.preempted, 1);
        assert_eq!(b.items.len(), 1);
        assert_eq!(reqs[1].status, Status::Waiting);
        assert_eq!(reqs[1].computed, 0);
        assert_eq!(reqs[1].pending_tokens(), 17, "prompt 16 + 1 generated token are recomputed");
        assert_eq!(q.waiting.front(), Some(&1));
    }

    #[test]
    fn swap_preemption_keeps_kv_and_swaps_back_in() {
        // Same pressure as the recompute test: request 1 needs a block that is not there, so it
        // is swapped out (its 2 blocks... here 1 block of 16 tokens) and comes back once request 0
        // finishes, without recomputing anything.
        let (mut reqs, mut q) = setup(&[16, 16], 10);
        let mut kv = BlockManager::new(3, 16, 0);
        let mut s = VllmScheduler::new(8, 1000).with_swap_space(10);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!((b.preempted, b.swap_out_blocks, b.swap_in_blocks), (1, 1, 0));
        assert_eq!(reqs[1].status, Status::Swapped);
        assert_eq!((reqs[1].computed, reqs[1].blocks, reqs[1].host_blocks), (16, 0, 1));
        assert_eq!(s.host_blocks_used(), 1);
        assert_eq!(q.swapped.front(), Some(&1));
        assert!(q.waiting.is_empty());
        let mut prefill_tokens = 0;
        let mut swapped_in = 0;
        for _ in 0..100 {
            finish(&b, &mut reqs, &mut q, &mut kv);
            b.clear();
            s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
            prefill_tokens += b.shape.prefill_tokens;
            swapped_in += b.swap_in_blocks;
            let held: u32 = reqs.iter().map(|r| r.blocks).sum();
            assert_eq!(held, kv.used());
            if b.items.is_empty() {
                break;
            }
        }
        assert_eq!(prefill_tokens, 0, "swapped requests are never recomputed");
        assert_eq!(swapped_in, 1);
        assert!(reqs.iter().all(|r| r.status == Status::Finished && r.generated == 10));
        assert_eq!((kv.used(), s.host_blocks_used()), (0, 0));
    }

    #[test]
    fn abort_frees_device_and_host_blocks_from_every_queue() {
        // Requests 1 and 2 are swapped out (1 host block each), request 0 runs (2 blocks), and a
        // request 3 arriving now waits.
        let (mut reqs, mut q) = setup(&[16, 16, 16], 10);
        let mut kv = BlockManager::new(3, 16, 0);
        let mut s = VllmScheduler::new(8, 1000).with_swap_space(10);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        let mut late = Request::new(0, 16, 10);
        late.status = Status::Waiting;
        reqs.push(late);
        q.waiting.push_back(3);
        assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), vec![Status::Running, Status::Swapped, Status::Swapped, Status::Waiting]);
        assert_eq!((kv.used(), s.host_blocks_used()), (2, 2));
        assert!(crate::scheduler::abort(1, &mut q, &mut reqs, &mut kv, &mut s));
        assert_eq!((s.host_blocks_used(), reqs[1].host_blocks), (1, 0));
        assert_eq!(q.swapped, [2]);
        assert!(crate::scheduler::abort(0, &mut q, &mut reqs, &mut kv, &mut s));
        assert_eq!(kv.used(), 0);
        assert!(q.running.is_empty());
        assert!(crate::scheduler::abort(3, &mut q, &mut reqs, &mut kv, &mut s));
        assert!(q.waiting.is_empty());
        assert!(crate::scheduler::abort(2, &mut q, &mut reqs, &mut kv, &mut s));
        assert_eq!((kv.used(), s.host_blocks_used()), (0, 0));
        assert!(reqs.iter().all(|r| r.status == Status::Finished));
        assert!(!crate::scheduler::abort(2, &mut q, &mut reqs, &mut kv, &mut s), "a second abort is a no-op");
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert!(b.items.is_empty());
    }

    #[test]
    fn full_host_falls_back_to_recompute() {
        let (mut reqs, mut q) = setup(&[16, 16], 10);
        let mut kv = BlockManager::new(3, 16, 0);
        let mut s = VllmScheduler::new(8, 1000).with_swap_space(0);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!((b.preempted, b.swap_out_blocks), (1, 0));
        assert_eq!(reqs[1].status, Status::Waiting);
    }

    #[test]
    fn watermark_blocks_admission_not_growth() {
        let (mut reqs, mut q) = setup(&[32], 4);
        let mut kv = BlockManager::new(3, 16, 1);
        let mut s = VllmScheduler::new(8, 1000);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.items.len(), 1, "2 blocks + watermark 1 fit 3");
        finish(&b, &mut reqs, &mut q, &mut kv);
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(kv.used(), 3, "a running request may take the watermark block");
    }
}
