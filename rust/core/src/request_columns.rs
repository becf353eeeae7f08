//! The per-request results of a run as columns, one entry per request in input order: what the
//! bindings hand to Python (as numpy arrays, moved, not copied) and what a streaming run writes as
//! each request is retired.

use crate::request::Request;

/// Per-request result columns. Times are nanoseconds, -1 marking "never" (no first token, not
/// scheduled, not completed); instance numbers are `u32`, `u32::MAX` marking "none" (not routed, no
/// separate prefill instance). Counts and instances take 4 bytes a request, times 8.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestColumns {
    /// Time of the first output token, or -1.
    pub first_token_ns: Vec<i64>,
    /// When an iteration first included the request, or -1.
    pub first_scheduled_ns: Vec<i64>,
    /// Time of the last output token, or -1.
    pub completion_ns: Vec<i64>,
    /// Instance serving it (its decode instance once handed off; `u32::MAX` if never routed).
    pub instance: Vec<u32>,
    /// Times it was preempted.
    pub preemptions: Vec<u32>,
    /// [`Status::code`](crate::request::Status::code) of its final state.
    pub status: Vec<u8>,
    /// Output tokens generated.
    pub generated_tokens: Vec<u32>,
    /// Instance that ran its prefill when that was a separate prefill instance, else `u32::MAX`.
    pub prefill_instance: Vec<u32>,
    /// Time after the first token spent waiting for its KV to reach the decode instance.
    pub kv_transfer_ns: Vec<i64>,
}

impl RequestColumns {
    /// Empty columns with room for `n` requests (the memory becomes resident as it is written).
    pub fn with_capacity(n: usize) -> Self {
        RequestColumns {
            first_token_ns: Vec::with_capacity(n),
            first_scheduled_ns: Vec::with_capacity(n),
            completion_ns: Vec::with_capacity(n),
            instance: Vec::with_capacity(n),
            preemptions: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            generated_tokens: Vec::with_capacity(n),
            prefill_instance: Vec::with_capacity(n),
            kv_transfer_ns: Vec::with_capacity(n),
        }
    }

    /// The columns of `reqs`, in order.
    pub fn of(reqs: &[Request]) -> Self {
        let mut c = RequestColumns::with_capacity(reqs.len());
        for r in reqs {
            c.push(r);
        }
        c
    }

    /// Requests written so far.
    pub fn len(&self) -> usize {
        self.status.len()
    }

    /// Whether no request has been written.
    pub fn is_empty(&self) -> bool {
        self.status.is_empty()
    }

    /// Appends request `r`'s results.
    pub fn push(&mut self, r: &Request) {
        let never = |t: u64| if t == u64::MAX { -1 } else { t as i64 };
        self.first_token_ns.push(never(r.first_token));
        self.first_scheduled_ns.push(never(r.first_scheduled));
        self.completion_ns.push(never(r.completion));
        self.instance.push(r.instance);
        self.preemptions.push(r.preemptions);
        self.status.push(r.status.code());
        self.generated_tokens.push(r.generated);
        self.prefill_instance.push(r.prefill_instance);
        // Time after the first token spent waiting for the KV to reach the decode instance.
        self.kv_transfer_ns.push(if r.transfer.1 > 0 && r.first_token != u64::MAX { r.transfer.1.saturating_sub(r.first_token) as i64 } else { 0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Status;

    #[test]
    fn codes_never_as_minus_one_and_the_transfer_wait() {
        let mut done = Request::new(5, 10, 2);
        (done.first_token, done.completion, done.first_scheduled, done.status) = (100, 300, 50, Status::Finished);
        (done.instance, done.prefill_instance, done.transfer, done.generated) = (3, 1, (80, 160), 2);
        let waiting = Request::new(7, 10, 2);
        let c = RequestColumns::of(&[done, waiting]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.first_token_ns, [100, -1]);
        assert_eq!(c.first_scheduled_ns, [50, -1]);
        assert_eq!(c.completion_ns, [300, -1]);
        assert_eq!(c.instance, [3, u32::MAX]);
        assert_eq!(c.prefill_instance, [1, u32::MAX]);
        assert_eq!(c.kv_transfer_ns, [60, 0]);
        assert_eq!(c.status, [0, 2]);
        assert_eq!(c.generated_tokens, [2, 0]);
    }
}
