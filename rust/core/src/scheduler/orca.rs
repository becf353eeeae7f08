//! Orca-style iteration-level batching (Yu et al., OSDI 2022).
//!
//! Every iteration runs every admitted request: whole prompts for new ones, one token for the rest
//! (prefills and decodes mixed, so a long prompt stalls the decodes sharing its iteration). Orca has
//! no paged KV cache: it reserves a request's whole KV space when admitting it, so it never preempts
//! but fits fewer requests. `reserve_max_len` reserves the model's full context per request, as
//! Orca does; otherwise the request's own prompt + output ("Orca oracle").

use super::{DraftGrant, grant_drafts, try_admit, Batch, Scheduler, Queues};
use crate::kv::BlockManager;
use crate::request::Request;

/// Iteration-level batching with KV reserved per request at admission.
#[derive(Debug, Clone)]
pub struct OrcaScheduler {
    max_num_seqs: u32,
    reserve_tokens: Option<u32>,
    draft: DraftGrant,
}

impl OrcaScheduler {
    /// A scheduler admitting up to `max_num_seqs` requests, reserving `reserve_tokens` each
    /// (None: each request's own prompt + output).
    pub fn new(max_num_seqs: u32, reserve_tokens: Option<u32>) -> Self {
        OrcaScheduler { max_num_seqs, reserve_tokens, draft: DraftGrant::default() }
    }

    fn reservation(&self, r: &Request) -> u64 {
        self.reserve_tokens.map_or(r.peak_kv_tokens(), |t| t as u64)
    }
}

impl Scheduler for OrcaScheduler {
    fn schedule(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        while !q.waiting.is_empty() && (q.running.len() as u32) < self.max_num_seqs {
            let reserve = self.reserve_tokens;
            if !try_admit(q, reqs, kv, |r| Some(reserve.map_or(r.peak_kv_tokens(), |t| t as u64))) {
                break;
            }
        }
        for &idx in q.running.iter() {
            let r = &reqs[idx as usize];
            batch.push(idx, r, r.pending_tokens());
        }
        // No token budget: a speculating decode's draft is bounded by k and its reservation only.
        grant_drafts(batch, 0, reqs, kv, &self.draft, u32::MAX);
    }

    fn set_draft_grant(&mut self, grant: DraftGrant) {
        self.draft = grant;
    }

    fn reject_reason(&self, req: &Request) -> Option<String> {
        match self.reserve_tokens {
            Some(t) if req.peak_kv_tokens() > t as u64 => Some(format!("prompt + output exceeds the {t} tokens Orca reserves per request")),
            _ => None,
        }
    }

    fn kv_need_tokens(&self, req: &Request) -> u64 {
        self.reservation(req)
    }

    fn max_batch_tokens(&self) -> u32 {
        // A batch may hold several whole prompts; the activation reserve assumes one context's worth.
        self.reserve_tokens.unwrap_or(8192)
    }

    fn max_batch_seqs(&self) -> u32 {
        self.max_num_seqs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Status;
    use crate::scheduler::Item;

    #[test]
    fn admits_by_reservation_and_mixes_prefills_with_decodes() {
        let mut reqs: Vec<Request> = [100u32, 100, 100].iter().map(|&p| { let mut r = Request::new(0, p, 10); r.status = Status::Waiting; r }).collect();
        let mut q = Queues::default();
        q.waiting.extend(0..3);
        // 2048 tokens reserved per request, 300 blocks of 16: two fit (128 each), not three.
        let mut kv = BlockManager::new(300, 16, 0);
        let mut s = OrcaScheduler::new(8, Some(2048));
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.items, vec![Item { req: 0, tokens: 100, draft: 0 }, Item { req: 1, tokens: 100, draft: 0 }]);
        assert_eq!(kv.used(), 256);
        for it in &b.items {
            let r = &mut reqs[it.req as usize];
            r.computed += it.tokens;
            r.generated += 1;
        }
        b.clear();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(b.shape.decode_seqs, 2);
        assert_eq!(q.waiting.len(), 1, "the third waits for a reservation to free");
    }
}
