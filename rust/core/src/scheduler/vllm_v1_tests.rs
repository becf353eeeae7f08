//! Unit tests of vLLM v1's scheduling loop: chunking, admission, preemption, plans, prefix caching.

use super::super::testkit::{finish, setup};
use super::*;

fn fcfs(seqs: u32, tokens: u32, chunk: Option<u32>) -> VllmV1Scheduler {
    VllmV1Scheduler::new(Box::new(VllmV1Fcfs { max_num_seqs: seqs, max_num_batched_tokens: tokens, max_prefill_chunk: chunk }), seqs, tokens)
}

#[test]
fn admission_reserves_the_whole_prompt_unless_told_otherwise() {
    // 4 free blocks of 16: a 100-token prompt needs 7, so vLLM's default holds it back even
    // though its first 32-token chunk (2 blocks) would fit; without the reservation it starts.
    for (reserve, expect) in [(true, vec![]), (false, vec![(0, 32)])] {
        let (mut reqs, mut q) = setup(&[100], 2);
        let mut kv = BlockManager::new(4, 16, 0);
        let mut s = fcfs(8, 32, None).reserving_full_prompt(reserve);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(tokens(&b), expect);
    }
}

/// Applies batch `b` (its tokens computed) and schedules the next one into it.
fn next_step(s: &mut VllmV1Scheduler, b: &mut Batch, reqs: &mut [Request], q: &mut Queues, kv: &mut BlockManager) {
    finish(b, reqs, q, kv);
    b.clear();
    s.schedule(q, reqs, kv, b);
}

fn tokens(b: &Batch) -> Vec<(u32, u32)> {
    b.items.iter().map(|i| (i.req, i.tokens)).collect()
}

#[test]
fn chunks_prompts_into_the_budget_and_runs_decodes_first() {
    let (mut reqs, mut q) = setup(&[300, 100], 3);
    let mut kv = BlockManager::new(1000, 16, 0);
    let mut s = fcfs(8, 256, None);
    let mut b = Batch::default();
    s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert_eq!(tokens(&b), vec![(0, 256)]);
    next_step(&mut s, &mut b, &mut reqs, &mut q, &mut kv);
    // The running prompt finishes its last 44 tokens, then request 1 takes the rest of the budget.
    assert_eq!(tokens(&b), vec![(0, 44), (1, 100)]);
    next_step(&mut s, &mut b, &mut reqs, &mut q, &mut kv);
    assert_eq!(tokens(&b), vec![(0, 1), (1, 1)]);
}

#[test]
fn a_prefix_is_shared_in_the_step_that_computes_it_and_while_it_is_chunked() {
    // Two 256-token prompts with the same 16 prefix entries of 16 tokens, on a `budget`-token
    // step. vLLM v1 caches a block when it allocates it for tokens the step computes.
    let twins = |budget| {
        let (mut reqs, mut q) = setup(&[256, 256], 2);
        reqs.iter_mut().for_each(|r| r.hashes = (0..16u64).collect::<Vec<_>>().into());
        let (mut kv, mut b) = (BlockManager::new(1000, 16, 0).with_prefix_cache(16), Batch::default());
        fcfs(8, budget, None).schedule(&mut q, &mut reqs, &mut kv, &mut b);
        (tokens(&b), reqs, kv)
    };
    // Request 1, admitted after request 0 in the same step, finds its first 240 tokens cached
    // (at least one token is computed) and completes in the 16 tokens left; its recomputed
    // last entry is found cached too when its chunk is allocated: 16 references.
    let (batch, reqs, kv) = twins(300);
    assert_eq!(batch, vec![(0, 256), (1, 16)]);
    assert_eq!((reqs[1].computed, reqs[1].cache_refs, kv.prefix_cache().unwrap().hit_tokens), (240, 16, 240));
    // Chunked: request 0's first 128-token chunk caches its 8 entries in the step it runs.
    let (batch, _, kv) = twins(128);
    assert_eq!((batch, kv.prefix_cache().unwrap().len(), kv.used() <= kv.total()), (vec![(0, 128)], 8, true));
}

/// A plan given in advance.
struct Fixed(StepPlan);

impl BatchScheduler for Fixed {
    fn plan(&mut self, _s: &StepState) -> Result<StepPlan> {
        Ok(self.0.clone())
    }
}

#[test]
fn a_chunk_preempted_in_its_own_pass_caches_nothing() {
    // 6 blocks of 16. Step 1: request 0's 32-token prompt and request 1's first 16 tokens (its
    // first entry cached). Step 2 runs request 1 first (48 tokens, the last 3 blocks), then
    // request 0's decode needs a block: the plan's victim is request 1, preempted in the same
    // pass, so its chunk is never computed and none of its 3 later entries may be cached.
    let (mut reqs, mut q) = setup(&[32, 64], 2);
    reqs[1].hashes = (10..14u64).collect::<Vec<_>>().into();
    let mut kv = BlockManager::new(6, 16, 0).with_prefix_cache(16);
    let mut b = Batch::default();
    fcfs(8, 48, None).schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert_eq!(tokens(&b), vec![(0, 32), (1, 16)]);
    finish(&b, &mut reqs, &mut q, &mut kv);
    b.clear();
    let plan = StepPlan { token_budget: 49, max_num_seqs: 8, running_order: Some(vec![1, 0]), victim_order: Some(vec![1]), ..Default::default() };
    VllmV1Scheduler::new(Box::new(Fixed(plan)), 8, 49).schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert_eq!((tokens(&b), b.preempted), (vec![(0, 1)], 1));
    assert_eq!(kv.prefix_cache().unwrap().len(), 1, "only the computed first entry is cached");
}

#[test]
fn chunk_cap_limits_each_prompt() {
    let (mut reqs, mut q) = setup(&[300, 100], 3);
    let mut kv = BlockManager::new(1000, 16, 0);
    let mut s = fcfs(8, 256, Some(64));
    let mut b = Batch::default();
    s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert_eq!(tokens(&b), vec![(0, 64), (1, 64)]);
}

#[test]
fn preempts_newest_when_a_decode_does_not_fit_and_never_over_allocates() {
    // 4 blocks of 16 tokens: two 32-token prompts fill the cache; the first decode needs a third
    // block for request 0, so request 1 (newest) is preempted and returns to the front.
    let (mut reqs, mut q) = setup(&[32, 32], 4);
    let mut kv = BlockManager::new(4, 16, 0);
    let mut s = fcfs(8, 256, None);
    let mut b = Batch::default();
    s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert_eq!(tokens(&b), vec![(0, 32), (1, 32)]);
    next_step(&mut s, &mut b, &mut reqs, &mut q, &mut kv);
    assert_eq!(tokens(&b), vec![(0, 1)]);
    assert_eq!(b.preempted, 1);
    assert_eq!(q.waiting.front(), Some(&1));
    assert!(kv.used() <= kv.total());
}

struct Reversed;
impl BatchScheduler for Reversed {
    fn plan(&mut self, s: &StepState) -> Result<StepPlan> {
        Ok(StepPlan { token_budget: 64, max_num_seqs: 8, waiting_order: Some(s.queues.waiting.iter().rev().copied().collect()), ..StepPlan::default() })
    }
}

#[test]
fn waiting_order_decides_admission() {
    let (mut reqs, mut q) = setup(&[40, 40], 2);
    let mut kv = BlockManager::new(100, 16, 0);
    let mut s = VllmV1Scheduler::new(Box::new(Reversed), 8, 64);
    let mut b = Batch::default();
    s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert_eq!(tokens(&b), vec![(1, 40), (0, 24)]);
}

#[test]
fn a_plan_over_the_pool_limits_is_an_error() {
    let (mut reqs, mut q) = setup(&[40], 2);
    let mut kv = BlockManager::new(100, 16, 0);
    let mut s = VllmV1Scheduler::new(Box::new(Fixed(StepPlan { token_budget: 10_000, max_num_seqs: 8, ..StepPlan::default() })), 8, 64);
    let mut b = Batch::default();
    s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert!(b.items.is_empty());
    let e = s.take_error().expect("an error");
    assert!(e.to_string().contains("token_budget"), "{e}");
}

/// Chunks of 32 on the first step, then whole prompts with the asking request itself as the
/// first victim.
struct SelfVictim;
impl BatchScheduler for SelfVictim {
    fn plan(&mut self, s: &StepState) -> Result<StepPlan> {
        let first = s.step == 0;
        Ok(StepPlan { token_budget: 64, max_num_seqs: 8, max_prefill_chunk: first.then_some(32), victim_order: (!first).then(|| vec![0]), ..StepPlan::default() })
    }
}

#[test]
fn a_pass_that_only_preempts_is_planned_again_at_once() {
    // Step 2: request 0 needs 3 more blocks, 2 are free, and the plan makes it its own victim:
    // the pass schedules nothing. Request 1 still runs, so the loop plans again at once instead
    // of leaving the instance idle with nothing to wake it.
    let (mut reqs, mut q) = setup(&[80, 16], 4);
    let mut kv = BlockManager::new(5, 16, 0);
    let mut s = VllmV1Scheduler::new(Box::new(SelfVictim), 8, 64).reserving_full_prompt(false);
    let mut b = Batch::default();
    s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert_eq!(tokens(&b), vec![(0, 32), (1, 16)]);
    next_step(&mut s, &mut b, &mut reqs, &mut q, &mut kv);
    assert_eq!(tokens(&b), vec![(1, 1)]);
    assert_eq!(b.preempted, 1);
    assert!(s.take_error().is_none());
}

#[test]
fn an_idle_instance_whose_plan_admits_nothing_is_a_stall() {
    // A 100-token prompt reserved whole on 4 blocks of 16 never fits (the simulator rejects such
    // a request on arrival; here nothing does): nothing runs, the cache is free, nothing is admitted.
    let (mut reqs, mut q) = setup(&[100], 2);
    let mut kv = BlockManager::new(4, 16, 0);
    let mut s = fcfs(8, 32, None);
    let mut b = Batch::default();
    s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
    let e = s.take_error().expect("a stall").to_string();
    assert!(e.contains("stalled") && e.contains("request 0") && e.contains("vllm-v1"), "{e}");
}

#[test]
fn the_watermark_is_kept_only_while_a_request_runs() {
    // 10 blocks of 16, a watermark of 2. Alone, a 160-token prompt may take all 10 blocks (vLLM
    // v1 applies the watermark only while something runs); behind a running request, a prompt
    // must leave the watermark free.
    let (mut reqs, mut q) = setup(&[160], 2);
    let mut kv = BlockManager::new(10, 16, 2);
    let mut b = Batch::default();
    fcfs(8, 512, None).schedule(&mut q, &mut reqs, &mut kv, &mut b);
    assert_eq!(tokens(&b), vec![(0, 160)]);
    assert_eq!(kv.used(), 10);

    // Request 0 (16 tokens, one block) runs; request 1 needs 7 blocks of the 9 free: 7 + 2 fit, 8 + 2
    // would not.
    for (prompt, admitted) in [(112, true), (128, false)] {
        let (mut reqs, mut q) = setup(&[16, prompt], 4);
        let mut kv = BlockManager::new(10, 16, 2);
        let mut s = fcfs(8, 512, None);
        let mut b = Batch::default();
        s.schedule(&mut q, &mut reqs, &mut kv, &mut b);
        assert_eq!(tokens(&b)[0], (0, 16), "prompt {prompt}");
        assert_eq!(tokens(&b).len() == 2, admitted, "prompt {prompt}: {:?}", tokens(&b));
    }
}
