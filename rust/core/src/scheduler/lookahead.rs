//! Speculative decoding's share of scheduling: how many draft tokens each decode proposes, its
//! KV lookahead, and the token budget the verify pass takes.
//!
//! A speculating decode runs a verify pass of its granted draft tokens + 1 query tokens, and vLLM
//! v1 counts all of them against `max_num_batched_tokens` (its `num_new_tokens` is 1 + the
//! number of spec tokens), so the prefill chunks sharing the iteration shrink. Every budgeted
//! scheduler here does the same: a decode of `r` proposes
//! `min(k, output tokens left - 1, budget left)` draft tokens, fewer while its lookahead blocks do
//! not fit (vLLM's lookahead slots: allocated before the step, kept for the next one), and the
//! budget then loses 1 + the tokens granted.

use super::Batch;
use crate::cost::ClassCaps;
use crate::kv::BlockManager;
use crate::request::Request;

/// The draft tokens the scheduler may grant each decode in the next step: up to `k` for every
/// decode, or under adaptive verification with acceptance classes the cap of the decode's class
/// (never above `k`, the most of any class).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftGrant {
    /// The most draft tokens any decode proposes (0: the pool does not speculate this step).
    pub k: u32,
    /// Caps by acceptance class (None: `k` for every decode).
    pub by_class: Option<ClassCaps>,
}

impl DraftGrant {
    /// Up to `k` draft tokens for every decode.
    pub fn uniform(k: u32) -> Self {
        DraftGrant { k, by_class: None }
    }

    /// The most draft tokens the decode of the request at index `req` may propose.
    pub fn for_request(&self, req: u32) -> u32 {
        match &self.by_class {
            None => self.k,
            Some(caps) => caps.of(req).min(self.k),
        }
    }
}

/// Draft tokens the decode of `r` proposes this step: up to `k`, at most its output tokens left
/// but one and at most `budget` (token budget left beside its own token), as many as its KV
/// lookahead blocks allow. Allocates those blocks; counts in `denied` a decode that got fewer
/// than the budget allowed because its lookahead did not fit.
pub fn grant_draft(r: &mut Request, k: u32, budget: u32, kv: &mut BlockManager, denied: &mut u32) -> u32 {
    let want = k.min(r.output.saturating_sub(r.generated + 1)).min(budget);
    let mut granted = 0;
    for ki in (1..=want).rev() {
        let need = kv.growth(r, r.computed as u64 + 1 + ki as u64);
        if kv.can_grow(need) {
            kv.allocate(need);
            r.blocks += need;
            granted = ki;
            break;
        }
    }
    *denied += (granted < want) as u32;
    granted
}

/// Grants draft tokens (see [`grant_draft`]) to the decodes among `batch.items[from..]`, in
/// batch order, up to what `grant` allows each and within `budget` tokens beside their own;
/// returns the draft tokens granted. Nothing is granted when `grant.k` is 0 (a pool that does not
/// speculate).
pub fn grant_drafts(batch: &mut Batch, from: usize, reqs: &mut [Request], kv: &mut BlockManager, grant: &DraftGrant, budget: u32) -> u32 {
    if grant.k == 0 {
        return 0;
    }
    let mut used = 0;
    for i in from..batch.items.len() {
        let it = batch.items[i];
        let r = &mut reqs[it.req as usize];
        if it.tokens != 1 || !r.is_decoding() {
            continue;
        }
        let d = grant_draft(r, grant.for_request(it.req), budget - used, kv, &mut batch.lookahead_denied);
        batch.items[i].draft = d;
        used += d;
    }
    used
}

impl Batch {
    /// Adds `tokens` of `req` to the batch with `draft` draft tokens to verify (a decode's).
    pub fn push_with_draft(&mut self, req_idx: u32, req: &Request, tokens: u32, draft: u32) {
        self.push(req_idx, req, tokens);
        if let Some(last) = self.items.last_mut() {
            last.draft = draft;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::setup;
    use super::super::{Scheduler, SarathiScheduler, SarathiVariant, VllmV1Fcfs, VllmV1Scheduler};
    use super::*;
    use crate::request::Status;

    /// 16 requests of 30 + 100 tokens decoding (each has sampled its first token and holds the
    /// 2 blocks of 16 its 31 tokens need) and a 1000-token prompt waiting, scheduled by `s` with
    /// drafts of `k`: returns the batch.
    fn sixteen_decodes_and_a_prompt(s: &mut dyn Scheduler, k: u32) -> Batch {
        s.set_draft_tokens(k);
        let mut prompts = vec![30; 16];
        prompts.push(1000);
        let (mut reqs, mut q) = setup(&prompts, 100);
        let mut kv = BlockManager::new(10_000, 16, 0);
        q.waiting.drain(..16);
        for (i, r) in reqs[..16].iter_mut().enumerate() {
            (r.status, r.computed, r.generated, r.blocks) = (Status::Running, 30, 1, 2);
            kv.allocate(2);
            q.running.push(i as u32);
        }
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        // A decode granted d draft tokens holds the lookahead blocks of 31 + d tokens.
        for it in b.items.iter().filter(|i| i.tokens == 1) {
            assert_eq!(reqs[it.req as usize].blocks, (31 + it.draft).div_ceil(16));
        }
        b
    }

    #[test]
    fn speculating_decodes_take_their_verify_length_of_the_vllm_v1_budget() {
        // Budget 512, 16 decodes verifying 1 + 4 tokens each: 512 - 16 x 5 = 432 prompt tokens.
        for (k, chunk) in [(0, 496), (4, 432)] {
            let mut s = VllmV1Scheduler::new(Box::new(VllmV1Fcfs { max_num_seqs: 64, max_num_batched_tokens: 512, max_prefill_chunk: None }), 64, 512);
            let b = sixteen_decodes_and_a_prompt(&mut s, k);
            assert_eq!(b.items.len(), 17);
            assert_eq!(b.lookahead_denied, 0);
            assert!(b.items[..16].iter().all(|i| i.tokens == 1 && i.draft == k));
            assert_eq!((b.items[16].req, b.items[16].tokens, b.items[16].draft), (16, chunk, 0));
        }
    }

    #[test]
    fn speculating_decodes_take_their_verify_length_of_the_sarathi_serve_budget() {
        for (k, chunk) in [(0, 496), (4, 432)] {
            let mut s = SarathiScheduler::new(SarathiVariant::SarathiServe(512), 64);
            let b = sixteen_decodes_and_a_prompt(&mut s, k);
            assert!(b.items[..16].iter().all(|i| i.tokens == 1 && i.draft == k));
            assert_eq!((b.items[16].req, b.items[16].tokens), (16, chunk));
        }
    }

    #[test]
    fn a_tight_budget_trims_the_drafts_and_leaves_no_prompt_tokens() {
        // Budget 40: 16 decode tokens, then 24 draft tokens: six decodes get 4, the rest none.
        let mut s = SarathiScheduler::new(SarathiVariant::SarathiServe(40), 64);
        let b = sixteen_decodes_and_a_prompt(&mut s, 4);
        assert_eq!(b.items.iter().map(|i| i.draft).collect::<Vec<_>>(), [vec![4; 6], vec![0; 10]].concat());
        assert_eq!(b.items.len(), 16, "no budget left for the prompt");
        assert_eq!(b.lookahead_denied, 0, "the budget, not the KV cache, trimmed them");
    }

    #[test]
    fn a_lookahead_that_does_not_fit_is_shortened_and_counted() {
        // A 16-token prompt decoding its first output token holds 2 blocks of 16 (17 tokens);
        // one free block: 4 draft tokens need 21 tokens (2 blocks), fit; 20 more would not.
        let (mut reqs, _) = setup(&[16], 100);
        reqs[0].generated = 1;
        reqs[0].computed = 16;
        let mut kv = BlockManager::new(2, 16, 0);
        kv.allocate(1);
        reqs[0].blocks = 1;
        let mut denied = 0;
        assert_eq!(grant_draft(&mut reqs[0], 4, 100, &mut kv, &mut denied), 4);
        assert_eq!((reqs[0].blocks, denied), (2, 0));
        reqs[0].computed = 31;
        reqs[0].generated = 16;
        // 31 cached + 1 + k: k = 0 fits the 2 blocks held, any draft needs a third: none free.
        assert_eq!(grant_draft(&mut reqs[0], 4, 100, &mut kv, &mut denied), 0);
        assert_eq!(denied, 1);
    }
}
