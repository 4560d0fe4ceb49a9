//! FxHash (rustc's hasher) for maps keyed by small integers and our own strings.
//!
//! The keys are node ids, layer ids and names from our topology, never an attacker's
//! choice of many colliding strings, so a fast non-cryptographic hash is right: SipHash
//! doubled the diagnosis time and slowed building a 1.5-million-cell round.

use std::collections::{HashMap, HashSet};

/// The hasher's state.
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
}

/// Builds [`Fx`] hashers.
pub type FxBuild = std::hash::BuildHasherDefault<Fx>;
/// A `HashMap` with [`Fx`].
pub type FxMap<K, V> = HashMap<K, V, FxBuild>;
/// A `HashSet` with [`Fx`].
pub type FxSet<K> = HashSet<K, FxBuild>;
