//! A filter of the keys the table of established flows (`FLOWS`) may hold.
//!
//! A SYN almost never has an entry there, yet it must be looked up: a forged RST and SYN
//! must not move a live connection (docs/packet-policy.md). That miss was the one lookup
//! a new flow made beyond what a balancer without that guarantee makes; the filter tells
//! most SYNs that their key is not in the table, for one load of a word.
//!
//! `FLOW_FILTER` holds a header line and two bitmaps. The data plane sets a key's bit in
//! both bitmaps whenever it inserts the key into `FLOWS`, and reads the one the header
//! names. The controller's flow-table sweep rebuilds the other: it clears it, sets the
//! bit of every key it walks (a key inserted meanwhile has its bit set by the data plane),
//! then names it in the header. So a clear bit always means "not in `FLOWS`"; a set bit
//! may be a key since evicted, or another key's, and costs only the lookup.

use crate::{FlowKey, FlowKey6};

/// A flow key the filter holds: both families' keys share the bitmaps (the IPv6 table is
/// a quarter of the IPv4 one, so IPv6 keys add at most a quarter to the bits set, and a
/// key of one family sharing a bit with one of the other costs only a lookup).
pub trait FilterKey {
    /// The key folded to two words, before the slot's hashing.
    fn filter_words(&self) -> [u64; 2];
}

impl FilterKey for FlowKey {
    #[inline(always)]
    fn filter_words(&self) -> [u64; 2] {
        self.words()
    }
}

impl FilterKey for FlowKey6 {
    /// Rotations keep the source's and the destination's halves from cancelling out
    /// (a client and a VIP in the same /64 have equal upper halves).
    #[inline(always)]
    fn filter_words(&self) -> [u64; 2] {
        let [s0, s1, d0, d1, rest] = self.words();
        [s0 ^ d0.rotate_left(21) ^ rest, s1 ^ d1.rotate_left(43)]
    }
}

/// Words before the bitmaps:
/// - `FLOW_FILTER_ACTIVE`: which bitmap the data plane reads, 0 or 1;
/// - `FLOW_FILTER_CAPACITY`: the words each bitmap may use (bitmap 1 starts that far
///   after bitmap 0); 0: the filter is not sized, every key may be there;
/// - `flow_filter_words_at(which)`: the words bitmap `which` uses now, a power of two, at
///   most the capacity. Each rebuild sizes the bitmap it rebuilds for the keys the flow
///   tables held at the last sweep (`flow_filter_words_for`), so a table far from full
///   is filtered by a bitmap that stays in cache: on a 4M-entry table a full-size bitmap
///   is 4 MB, and its one load was a fifth of a new flow's cost;
/// - `FLOW_FILTER_KEYS`: the keys the last rebuild walked, what the next one sizes for
///   (the controller's alone; kept here so a restarted controller finds it).
///
/// The rest pads the header to a cache line of its own, away from the bitmaps' writes.
pub const FLOW_FILTER_HEADER_WORDS: u32 = 8;
pub const FLOW_FILTER_ACTIVE: u32 = 0;
pub const FLOW_FILTER_CAPACITY: u32 = 1;
pub const FLOW_FILTER_KEYS: u32 = 4;

/// The header word holding the words bitmap `which` (0 or 1) uses.
#[inline(always)]
pub const fn flow_filter_words_at(which: u64) -> u32 {
    2 + (which & 1) as u32
}

/// Bits of the smallest bitmap: 128 KiB, small enough for a CPU's L2 cache and a few
/// TLB entries, and an eighth full at 131,072 keys.
pub const FLOW_FILTER_MIN_BITS: u64 = 1 << 20;

/// The capacity of each bitmap for a flow table of `flow_table_size` entries: eight bits
/// per entry, rounded up to a power of two, so a full table sets at most an eighth of
/// them.
pub const fn flow_filter_bitmap_words(flow_table_size: u32) -> u32 {
    let bits = flow_table_size.next_power_of_two() as u64 * 8;
    (bits / 64) as u32
}

/// Entries of `FLOW_FILTER`: the header and two bitmaps of full capacity.
pub const fn flow_filter_entries(flow_table_size: u32) -> u32 {
    FLOW_FILTER_HEADER_WORDS + 2 * flow_filter_bitmap_words(flow_table_size)
}

/// The words a bitmap rebuilt for `keys` keys uses, of `capacity`: eight bits per key
/// with room for the table to double before the next rebuild, at least
/// `FLOW_FILTER_MIN_BITS`. A table that grows faster only fills the bitmap: more SYNs
/// pay the lookup the filter spares them, none is answered wrongly.
pub const fn flow_filter_words_for(keys: u64, capacity: u64) -> u64 {
    let wanted = keys.saturating_mul(16);
    let bits = if wanted < FLOW_FILTER_MIN_BITS {
        FLOW_FILTER_MIN_BITS
    } else {
        match wanted.checked_next_power_of_two() {
            Some(bits) => bits,
            None => u64::MAX,
        }
    };
    let words = bits / 64;
    if words < capacity { words } else { capacity }
}

/// Where a key's bit lies in bitmap `which` (0 or 1) using `words` words (a power of
/// two, not 0) of `capacity`: the map entry and the bit within it. Multiplicative hashing
/// of both halves of the key, cheap enough for every SYN.
#[inline(always)]
pub fn flow_filter_slot<K: FilterKey>(
    key: &K,
    which: u64,
    words: u64,
    capacity: u64,
) -> (u32, u64) {
    let [a, b] = key.filter_words();
    let h = (a ^ b.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // The product's high bits are the well-mixed ones.
    let bit = (h >> 32) & (words * 64 - 1);
    let word = FLOW_FILTER_HEADER_WORDS as u64 + (which & 1) * capacity + bit / 64;
    (word as u32, 1 << (bit % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(flow_filter_bitmap_words(1024), 128);
        assert_eq!(flow_filter_bitmap_words(1000), 128);
        assert_eq!(flow_filter_bitmap_words(1 << 20), 1 << 17);
        assert_eq!(flow_filter_bitmap_words(67_108_864), 1 << 23);
        assert_eq!(flow_filter_entries(1024), 8 + 256);
    }

    #[test]
    fn a_bitmap_is_sized_for_its_keys_within_its_capacity() {
        let capacity = u64::from(flow_filter_bitmap_words(1 << 22));
        assert_eq!(capacity, 1 << 19, "4 MiB per bitmap for a 4M-entry table");
        // Empty or small: the smallest bitmap.
        assert_eq!(flow_filter_words_for(0, capacity), 1 << 14);
        assert_eq!(flow_filter_words_for(65_536, capacity), 1 << 14);
        // 16 bits per key, rounded up.
        assert_eq!(flow_filter_words_for(100_000, capacity), 1 << 15);
        assert_eq!(flow_filter_words_for(1 << 20, capacity), 1 << 18);
        // Never past the capacity, even for more keys than the table holds.
        assert_eq!(flow_filter_words_for(1 << 22, capacity), capacity);
        assert_eq!(flow_filter_words_for(u64::MAX, capacity), capacity);
        // A small table's capacity is below the smallest bitmap.
        assert_eq!(flow_filter_words_for(0, 128), 128);
    }

    #[test]
    fn slots_stay_in_their_bitmap_and_spread() {
        let words = flow_filter_bitmap_words(1 << 16) as u64;
        let mut seen = std::collections::HashSet::new();
        let n = 1u32 << 16;
        for i in 0..n {
            // Sources and ports as the bench's new flows vary them.
            let key = FlowKey::new(
                0xc612_0001 + (i >> 10),
                0xc613_0064,
                (i & 1023) as u16,
                80,
                6,
            );
            for which in 0..2 {
                // A bitmap smaller than its capacity stays at the start of its own.
                let used = words / (which + 1);
                let (word, bit) = flow_filter_slot(&key, which, used, words);
                let first = u64::from(FLOW_FILTER_HEADER_WORDS) + which * words;
                assert!((first..first + used).contains(&u64::from(word)));
                assert_eq!(bit.count_ones(), 1);
            }
            let (word, bit) = flow_filter_slot(&key, 0, words, words);
            seen.insert((word, bit.trailing_zeros()));
        }
        // 65536 keys into 524288 bits: a uniform hash leaves about 6 % of them sharing.
        assert!(
            seen.len() as f64 > 0.9 * f64::from(n),
            "{} distinct bits",
            seen.len()
        );
    }

    #[test]
    fn ipv6_keys_spread_too() {
        let words = flow_filter_bitmap_words(1 << 16) as u64;
        let mut seen = std::collections::HashSet::new();
        let n = 1u32 << 14;
        // 2001:db8:18::/48 clients, varied as the IPv6 bench's new flows are (the low
        // word of the source) and by port, to one VIP.
        let addr = |last: u32| {
            [
                0x2001_0db8u32.to_be(),
                0x0018_0000u32.to_be(),
                0,
                last.to_be(),
            ]
        };
        for i in 0..n {
            let key = FlowKey6 {
                src_addr: addr(0x8000_0000 + (i >> 4)),
                dst_addr: addr(0x100),
                src_port: (40_000 + (i & 15) as u16).to_be(),
                dst_port: 80u16.to_be(),
                protocol: 6,
                _pad: [0; 3],
            };
            let (word, bit) = flow_filter_slot(&key, 1, words, words);
            let first = u64::from(FLOW_FILTER_HEADER_WORDS) + words;
            assert!((first..first + words).contains(&u64::from(word)));
            seen.insert((word, bit.trailing_zeros()));
        }
        // 16384 keys into 524288 bits: about 1.5 % share a bit under a uniform hash.
        assert!(
            seen.len() as f64 > 0.95 * f64::from(n),
            "{} distinct bits",
            seen.len()
        );
    }
}
