//! A request's state as it moves through an instance.

use crate::hash_list::HashList;
use crate::time::Nanos;

/// Where a request is in its life. `Pending` is zero (a vacant request's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Not arrived yet.
    Pending = 0,
    /// Queued on an instance, no KV held.
    Waiting,
    /// Admitted: holds KV blocks, in prefill or decode.
    Running,
    /// Preempted by swapping: its KV blocks are in host memory, waiting to be swapped back in.
    Swapped,
    /// Prefilled on a prefill instance, waiting for its KV cache to reach a decode instance.
    Handoff,
    /// All output tokens produced.
    Finished,
    /// Refused: it can never fit this instance (prompt over the token budget, or KV capacity).
    Rejected,
}

/// One request. Token accounting follows one rule for prefill and decode alike: `computed` tokens
/// have their KV in the cache; once every known token (`prompt + generated`) is computed the
/// iteration samples the next one. After a preemption by recompute `computed` drops to 0 and the
/// prompt plus the tokens generated so far are prefilled again.
#[derive(Debug, Clone)]
pub struct Request {
    /// Arrival time.
    pub arrival: Nanos,
    /// Prompt tokens.
    pub prompt: u32,
    /// Output tokens to generate.
    pub output: u32,
    /// Tokens whose KV is computed and cached.
    pub computed: u32,
    /// Output tokens generated so far.
    pub generated: u32,
    /// KV blocks held in GPU memory.
    pub blocks: u32,
    /// KV blocks held in host memory while swapped out.
    pub host_blocks: u32,
    /// Prefix-block hashes of the prompt (empty: no prefix caching for it).
    pub hashes: HashList,
    /// Leading entries of `hashes` this request references in the prefix cache.
    pub cache_refs: u32,
    /// KV blocks of those entries (owned by the cache, not counted in `blocks`).
    pub shared_blocks: u32,
    /// Instance serving it (`u32::MAX` before routing); its decode instance once handed off.
    pub instance: u32,
    /// Instance that ran its prefill, when that was a separate prefill instance (else `u32::MAX`).
    pub prefill_instance: u32,
    /// When its KV transfer to the decode instance started and ended (0 when none).
    pub transfer: (Nanos, Nanos),
    /// When an iteration first included it (`Nanos::MAX` until then): arrival to this is its
    /// scheduling delay (vLLM's queue time).
    pub first_scheduled: Nanos,
    /// Time of the first output token (`Nanos::MAX` until then).
    pub first_token: Nanos,
    /// Time of the latest output token.
    pub last_token: Nanos,
    /// Time of the last output token (`Nanos::MAX` until finished).
    pub completion: Nanos,
    /// Times it was preempted.
    pub preemptions: u32,
    /// Lifecycle state.
    pub status: Status,
}

impl Status {
    /// The status as the result columns code it: 0 finished, 1 rejected, 2 pending, 3 waiting,
    /// 4 running, 5 swapped, 6 handoff.
    pub fn code(self) -> u8 {
        match self {
            Status::Finished => 0,
            Status::Rejected => 1,
            Status::Pending => 2,
            Status::Waiting => 3,
            Status::Running => 4,
            Status::Swapped => 5,
            Status::Handoff => 6,
        }
    }
}

impl Request {
    /// A vacant slot: every field zero (a request not created yet, or one retired after its
    /// result was written out). Its bit pattern is all zeros; see [`vacant_requests`].
    pub const VACANT: Request = Request { arrival: 0, prompt: 0, output: 0, computed: 0, generated: 0, blocks: 0, host_blocks: 0, hashes: HashList::EMPTY, cache_refs: 0, shared_blocks: 0, instance: 0, prefill_instance: 0, transfer: (0, 0), first_scheduled: 0, first_token: 0, last_token: 0, completion: 0, preemptions: 0, status: Status::Pending };

    /// A request arriving at `arrival` with `prompt` input and `output` output tokens.
    pub fn new(arrival: Nanos, prompt: u32, output: u32) -> Self {
        Request { arrival, prompt, output, computed: 0, generated: 0, blocks: 0, host_blocks: 0, hashes: HashList::EMPTY, cache_refs: 0, shared_blocks: 0, instance: u32::MAX, prefill_instance: u32::MAX, transfer: (0, 0), first_scheduled: Nanos::MAX, first_token: Nanos::MAX, last_token: 0, completion: Nanos::MAX, preemptions: 0, status: Status::Pending }
    }

    /// Tokens known so far (prompt plus generated output).
    pub fn known_tokens(&self) -> u32 {
        self.prompt + self.generated
    }

    /// Tokens still to compute before the next sample.
    pub fn pending_tokens(&self) -> u32 {
        self.known_tokens() - self.computed
    }

    /// Whether the request is decoding (one token per iteration) rather than prefilling.
    pub fn is_decoding(&self) -> bool {
        self.generated > 0 && self.pending_tokens() == 1
    }

    /// The most KV tokens it can ever hold: the last output token is sampled but never cached.
    pub fn peak_kv_tokens(&self) -> u64 {
        self.prompt as u64 + self.output as u64 - 1
    }
}

/// `n` vacant requests ([`Request::VACANT`]) in one zero-filled allocation: the allocator hands out
/// fresh zero pages for a large one, so a slot's memory becomes resident only when a request is
/// written into it (a streaming run writes each request when it arrives). None when the memory
/// cannot be had.
pub fn vacant_requests(n: usize) -> Option<Vec<Request>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<Request>(n).ok()?;
    // SAFETY: `layout` has non-zero size. Every field of `Request` is an integer, a `HashList`
    // (null pointer and zero length: the empty list) or `Status` (`repr(u8)`, `Pending = 0`), so
    // all-zero bytes are a valid `Request` (`Request::VACANT`, checked by a test). The memory comes
    // from the global allocator with `Layout::array::<Request>(n)`, as `Vec::from_raw_parts` needs.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut Request;
        if ptr.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(ptr, n, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_requests_are_vacant() {
        let v = vacant_requests(3).unwrap();
        assert_eq!(v.len(), 3);
        for r in &v {
            assert_eq!(format!("{r:?}"), format!("{:?}", Request::VACANT));
        }
        assert_eq!(Status::Pending as u8, 0);
        assert_eq!(Status::Handoff.code(), 6);
    }
}
