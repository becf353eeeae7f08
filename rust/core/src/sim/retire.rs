//! Streaming runs: each request is written into its (vacant, zero-filled) slot when it arrives and
//! retired once it and every earlier request are finished or rejected: its results are appended to
//! the [`RequestColumns`], its slot is made vacant again ([`Request::VACANT`], all zeros), and whole
//! pages of vacant slots are handed back to the operating system. Only the requests between the
//! oldest unfinished one and the latest arrival stay resident, so a run's memory no longer grows
//! by a whole request record per request.

use crate::request::{Request, Status};
use crate::request_columns::RequestColumns;

/// Retired slots are handed back in batches of at least this many (one system call per batch).
const RELEASE_BATCH: usize = 8192;

/// Where a streaming run's retirement stands.
pub(super) struct Retirement<'a> {
    /// The retired requests' results, request 0 first.
    columns: &'a mut RequestColumns,
    /// Requests `0..next` are retired.
    next: usize,
    /// Slots `0..released` are vacant and their whole pages were handed back.
    released: usize,
}

impl<'a> Retirement<'a> {
    /// Retirement into `columns` (which must be empty: request 0 is written first).
    pub(super) fn new(columns: &'a mut RequestColumns) -> Self {
        debug_assert!(columns.is_empty(), "retirement starts with empty columns");
        Retirement { columns, next: 0, released: 0 }
    }

    /// Requests retired so far (every request before this index).
    pub(super) fn retired(&self) -> usize {
        self.next
    }

    /// Retires the leading finished or rejected requests among the first `arrived` of `reqs`.
    pub(super) fn retire(&mut self, reqs: &mut [Request], arrived: usize) {
        while self.next < arrived && matches!(reqs[self.next].status, Status::Finished | Status::Rejected) {
            let r = &mut reqs[self.next];
            self.columns.push(r);
            *r = Request::VACANT;
            self.next += 1;
        }
        if self.next - self.released >= RELEASE_BATCH {
            release_vacant_pages(reqs, self.released, self.next);
            self.released = self.next;
        }
    }

    /// Writes the results of every request not retired yet (the run is over: all arrived).
    pub(super) fn finish(&mut self, reqs: &[Request]) {
        self.stop(reqs, reqs.len());
    }

    /// The run stopped after `arrived` arrivals: writes the results of the arrived requests not
    /// retired yet, and those of a pending request for each one that never arrived (its slot is
    /// still vacant), so the columns hold every request as a run keeping the records would.
    pub(super) fn stop(&mut self, reqs: &[Request], arrived: usize) {
        for r in &reqs[self.next..arrived] {
            self.columns.push(r);
        }
        let pending = Request::new(0, 1, 1);
        for _ in arrived.max(self.next)..reqs.len() {
            self.columns.push(&pending);
        }
        self.next = reqs.len();
    }
}

/// Hands back to the operating system the whole memory pages of `reqs` that lie inside slots
/// `0..end`, from the page holding slot `from` on (slots `0..end` must all be vacant). Reading such a
/// page afterwards gives zeros, which is what the vacant slots already hold, so this changes the
/// process's resident memory and nothing else.
fn release_vacant_pages(reqs: &mut [Request], from: usize, end: usize) {
    #[cfg(unix)]
    {
        debug_assert!(reqs[from..end].iter().all(|r| r.status == Status::Pending && r.hashes.is_empty()));
        const PAGE: usize = 4096;
        let size = std::mem::size_of::<Request>();
        let base = reqs.as_mut_ptr() as usize;
        let first = base.next_multiple_of(PAGE);
        let start = ((base + from * size) / PAGE * PAGE).max(first);
        let stop = (base + end * size) / PAGE * PAGE;
        if stop > start {
            // SAFETY: [start, stop) lies inside `reqs`'s allocation (anonymous private memory from
            // the allocator), holds only vacant slots (all-zero fields; padding is never read),
            // and we hold `reqs` mutably: MADV_DONTNEED makes those pages read as zeros again.
            unsafe {
                libc::madvise(start as *mut libc::c_void, stop - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (reqs, from, end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::vacant_requests;

    #[test]
    fn retires_in_order_up_to_the_first_unfinished_and_releases_pages() {
        let n = 3 * RELEASE_BATCH;
        let mut reqs = vacant_requests(n).unwrap();
        for (i, r) in reqs.iter_mut().enumerate() {
            *r = Request::new(i as u64, 10, 2);
            r.hashes = vec![i as u64].into();
            r.status = if i == 1 { Status::Running } else { Status::Finished };
            r.first_token = 100 + i as u64;
        }
        let mut cols = RequestColumns::default();
        let mut ret = Retirement::new(&mut cols);
        ret.retire(&mut reqs, n);
        assert_eq!(ret.retired(), 1, "stops at the running request 1");
        reqs[1].status = Status::Finished;
        ret.retire(&mut reqs, 2 * RELEASE_BATCH);
        assert_eq!(ret.retired(), 2 * RELEASE_BATCH, "only arrived requests retire");
        assert!(reqs[..2 * RELEASE_BATCH].iter().all(|r| r.status == Status::Pending && r.hashes.is_empty() && r.first_token == 0));
        assert_eq!(reqs[2 * RELEASE_BATCH].first_token, 100 + 2 * RELEASE_BATCH as u64);
        ret.finish(&reqs);
        assert_eq!(cols.len(), n);
        assert_eq!(cols.first_token_ns[..3], [100, 101, 102]);
        assert_eq!(cols.first_token_ns[n - 1], 100 + n as i64 - 1);
        assert!(cols.status.iter().all(|&s| s == 0));
    }
}
