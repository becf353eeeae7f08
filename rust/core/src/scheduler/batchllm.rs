//! BatchLLM-style offline batching (Zheng et al., 2024): global prefix sharing, decode-ratio
//! ordering and memory-centric token batching.
//!
//! The waiting queue is reordered globally whenever requests arrive: requests sharing a prefix
//! (the same first prefix-block hash) are kept together so the shared prefix is computed once and
//! stays cached, and groups (and requests within them) with more decode tokens per prompt token go
//! first. Admission is by memory, not request count: a request is admitted when the KV of its whole
//! lifetime (prompt + output, less the cached prefix it shares) fits, so nothing is ever preempted;
//! iterations then take every decode plus prefill chunks up to `token_budget` tokens. Decodes of one
//! prefix group read their shared prefix's keys and values once per iteration (a Hydragen-style
//! shared-prefix attention kernel), which the batch's cost reflects.

use super::{DraftGrant, grant_drafts, try_admit, Batch, Scheduler, Queues};
use crate::kv::BlockManager;
use crate::request::Request;
use std::collections::BTreeMap;

/// Offline batching with global prefix grouping and whole-lifetime KV reservation.
#[derive(Debug, Clone)]
pub struct BatchLlmScheduler {
    token_budget: u32,
    max_num_seqs: u32,
    draft: DraftGrant,
    sorted_len: usize,
}

impl BatchLlmScheduler {
    /// A scheduler with a per-iteration token budget and a sequence limit.
    pub fn new(token_budget: u32, max_num_seqs: u32) -> Self {
        BatchLlmScheduler { token_budget, max_num_seqs, draft: DraftGrant::default(), sorted_len: usize::MAX }
    }

    fn ratio(r: &Request) -> f64 {
        r.output as f64 / r.prompt as f64
    }

    /// Groups by first prefix hash, orders groups by mean decode ratio (descending), members by ratio.
    fn reorder(&mut self, q: &mut Queues, reqs: &[Request]) {
        let mut groups: BTreeMap<u64, (f64, u32)> = BTreeMap::new();
        for &i in &q.waiting {
            let r = &reqs[i as usize];
            let key = r.hashes.first().copied().unwrap_or(u64::MAX - i as u64);
            let g = groups.entry(key).or_insert((0.0, 0));
            g.0 += Self::ratio(r);
            g.1 += 1;
        }
        let mut order: Vec<u32> = q.waiting.iter().copied().collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&reqs[a as usize], &reqs[b as usize]);
            let ka = ra.hashes.first().copied().unwrap_or(u64::MAX - a as u64);
            let kb = rb.hashes.first().copied().unwrap_or(u64::MAX - b as u64);
            let (ga, gb) = (groups[&ka], groups[&kb]);
            let (ma, mb) = (ga.0 / ga.1 as f64, gb.0 / gb.1 as f64);
            mb.total_cmp(&ma).then(ka.cmp(&kb)).then(Self::ratio(rb).total_cmp(&Self::ratio(ra))).then(a.cmp(&b))
        });
        q.waiting = order.into_iter().collect();
        self.sorted_len = q.waiting.len();
    }

    /// Keys of shared prefixes that decodes of the same group need not read again.
    fn shared_reads(batch: &Batch, reqs: &[Request], tokens_per_entry: u32) -> u64 {
        let mut groups: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        for it in &batch.items {
            let r = &reqs[it.req as usize];
            if it.tokens == 1 && r.cache_refs > 0 {
                let g = groups.entry(r.hashes[0]).or_insert((0, u32::MAX));
                g.0 += 1;
                g.1 = g.1.min(r.cache_refs);
            }
        }
        groups.values().map(|&(m, refs)| (m as u64 - 1) * refs as u64 * tokens_per_entry as u64).sum()
    }
}

impl Scheduler for BatchLlmScheduler {
    fn schedule(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        if q.waiting.len() != self.sorted_len {
            self.reorder(q, reqs);
        }
        for &idx in &q.running {
            let r = &reqs[idx as usize];
            if r.is_decoding() {
                batch.push(idx, r, 1);
            }
        }
        let decodes = batch.items.len() as u32;
        // Speculating decodes verify 1 + their draft tokens, all within the token budget (their
        // lookahead lies inside the whole-lifetime reservation).
        let drafts = grant_drafts(batch, 0, reqs, kv, &self.draft, self.token_budget.saturating_sub(decodes));
        let mut budget = self.token_budget.saturating_sub(decodes + drafts);
        for &idx in &q.running {
            let r = &reqs[idx as usize];
            if budget > 0 && !r.is_decoding() && r.pending_tokens() > 0 {
                let n = r.pending_tokens().min(budget);
                batch.push(idx, r, n);
                budget -= n;
            }
        }
        while budget > 0 && (q.running.len() as u32) < self.max_num_seqs {
            let Some(&idx) = q.waiting.front() else { break };
            // The group's shared prefix is computed once: later members wait until the member
            // computing it has published it to the prefix cache.
            if let (Some(&h), Some(c)) = (reqs[idx as usize].hashes.first(), kv.prefix_cache()) {
                let computing = q.running.iter().any(|&j| reqs[j as usize].hashes.first() == Some(&h) && reqs[j as usize].cache_refs == 0);
                if computing && !c.contains(h) {
                    break;
                }
            }
            if !try_admit(q, reqs, kv, |r| Some(r.peak_kv_tokens())) {
                break;
            }
            self.sorted_len = q.waiting.len();
            let r = &reqs[idx as usize];
            let n = r.pending_tokens().min(budget);
            batch.push(idx, r, n);
            budget -= n;
        }
        if let Some(c) = kv.prefix_cache() {
            let saved = Self::shared_reads(batch, reqs, c.tokens_per_entry());
            batch.shape.decode_kv_tokens -= saved.min(batch.shape.decode_kv_tokens);
        }
    }

    fn set_draft_grant(&mut self, grant: DraftGrant) {
        self.draft = grant;
    }

    fn reject_reason(&self, _req: &Request) -> Option<String> {
        None
    }

    fn max_batch_tokens(&self) -> u32 {
        self.token_budget
    }

    fn max_batch_seqs(&self) -> u32 {
        self.max_num_seqs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Status;

    #[test]
    fn decodes_of_one_group_read_their_shared_prefix_once() {
        // Three decodes share 4 cached 16-token entries of prefix 7; one decode of prefix 9 shares
        // nothing with anyone in the batch: 2 x 64 keys are not read again.
        let mut reqs = Vec::new();
        let mut batch = Batch::default();
        for (i, h) in [7u64, 7, 7, 9].iter().enumerate() {
            let mut r = Request::new(0, 100, 10);
            r.hashes = vec![*h, 100 + i as u64].into();
            r.cache_refs = 4;
            r.computed = 100;
            r.generated = 1;
            batch.push(i as u32, &r, 1);
            reqs.push(r);
        }
        assert_eq!(BatchLlmScheduler::shared_reads(&batch, &reqs, 16), 2 * 64);
    }

    #[test]
    fn groups_shared_prefixes_and_orders_by_decode_ratio() {
        // Requests 0 and 2 share prefix A (decode-heavy), 1 and 3 share B (prefill-heavy).
        let mut reqs: Vec<Request> = [(100, 10, 7u64), (100, 100, 5), (100, 5, 7), (100, 200, 5)]
            .iter()
            .map(|&(p, o, h)| {
                let mut r = Request::new(0, p, o);
                r.hashes = vec![h, h * 10].into();
                r.status = Status::Waiting;
                r
            })
            .collect();
        let mut q = Queues::default();
        q.waiting.extend(0..4);
        let mut s = BatchLlmScheduler::new(10_000, 64);
        s.reorder(&mut q, &reqs);
        // Group B (ratios 1.0, 2.0) before group A (0.1, 0.05); by ratio inside each.
        assert_eq!(q.waiting.iter().copied().collect::<Vec<_>>(), vec![3, 1, 0, 2]);
        // Memory-centric: admission reserves prompt + output - 1 tokens (16-token blocks).
        let mut kv = BlockManager::new(40, 16, 0);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        // Request 3 needs ceil(299/16) = 19 blocks, request 1 ceil(199/16) = 13; request 0's 7 more
        // would make 39 <= 40, request 2's 7 then do not fit.
        assert_eq!(b.items.iter().map(|i| i.req).collect::<Vec<_>>(), vec![3, 1, 0]);
        assert_eq!(kv.used(), 19 + 13 + 7);
    }
}
