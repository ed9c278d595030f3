//! Hash maps keyed by object address, for the commit's hot loops.
//!
//! The merge looks objects up by address thousands of times per update
//! (twins, visited objects, live values). The standard hasher (SipHash) is
//! built to resist chosen keys; an address is not chosen by anyone, and
//! hashing it with a multiply is several times cheaper. The maps only hold
//! addresses of objects some `Py`/`Bound` keeps alive, so an address is
//! never reused while it is a key.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a `usize` (an address) by one multiply: addresses are aligned,
/// so the low bits carry nothing and the high bits of the product mix them in.
#[derive(Default, Clone, Copy)]
pub struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_usize` is used for addresses; anything else still
        // hashes correctly, if slower.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = ((n as u64) ^ (n as u64 >> 29))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
}

pub type AddressMap<V> = HashMap<usize, V, BuildHasherDefault<AddressHasher>>;
pub type AddressSet = HashSet<usize, BuildHasherDefault<AddressHasher>>;
