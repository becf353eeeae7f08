//! A request's prefix-block hashes in an owned, immutable list whose all-zero bit pattern is the
//! empty list (so a zero-filled allocation holds valid, empty lists: see
//! [`vacant_requests`](crate::request::vacant_requests)).

use std::ops::Deref;
use std::ptr;

/// An owned list of prefix-block hashes: a boxed slice as a raw pointer and a length, the null
/// pointer meaning empty. Reads as a `&[u64]`.
pub struct HashList {
    /// The boxed slice's first element; null when empty.
    ptr: *mut u64,
    /// Number of hashes.
    len: usize,
}

// SAFETY: a HashList owns its boxed slice exclusively, like a `Box<[u64]>`.
unsafe impl Send for HashList {}
// SAFETY: shared access only reads the slice, like a `&Box<[u64]>`.
unsafe impl Sync for HashList {}

impl HashList {
    /// The empty list (all-zero bits).
    pub const EMPTY: HashList = HashList { ptr: ptr::null_mut(), len: 0 };
}

impl Default for HashList {
    fn default() -> Self {
        HashList::EMPTY
    }
}

impl From<Vec<u64>> for HashList {
    fn from(v: Vec<u64>) -> Self {
        if v.is_empty() {
            return HashList::EMPTY;
        }
        let len = v.len();
        let ptr = Box::into_raw(v.into_boxed_slice()) as *mut u64;
        HashList { ptr, len }
    }
}

impl From<&[u64]> for HashList {
    fn from(v: &[u64]) -> Self {
        HashList::from(v.to_vec())
    }
}

impl Deref for HashList {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        if self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: a non-null `ptr` is a live boxed slice of `len` hashes owned by `self`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

impl Drop for HashList {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` and `len` came from `Box::into_raw` of a boxed slice of that length.
            drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
        }
    }
}

impl Clone for HashList {
    fn clone(&self) -> Self {
        HashList::from(&self[..])
    }
}

impl std::fmt::Debug for HashList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self[..].fmt(f)
    }
}

impl PartialEq for HashList {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_clones_and_drops_like_a_boxed_slice() {
        let a = HashList::from(vec![3, 1, 4]);
        let b = a.clone();
        drop(a);
        assert_eq!(&b[..], &[3, 1, 4]);
        assert_eq!(b.first(), Some(&3));
        assert!(HashList::from(Vec::new()).is_empty());
        assert_eq!(HashList::EMPTY.len(), 0);
    }

    #[test]
    fn all_zero_bits_are_the_empty_list() {
        // SAFETY: the test checks exactly this claim (pointer and length are plain integers).
        let z: HashList = unsafe { std::mem::zeroed() };
        assert!(z.is_empty());
        assert_eq!(z, HashList::EMPTY);
    }
}
