//! Weighted Maglev table builder (Eisenbud et al., NSDI 2016, with weights).
//!
//! Each backend walks its own permutation of the table (offset and skip from a hash of
//! its address and port, never of its id, so every LB host and every restart builds the
//! same table). Backends take turns claiming their next free slot; a backend of weight w
//! claims w/max_weight turns per round, so its share of slots follows its weight share
//! to within a slot per backend.

use crate::{NO_BACKEND, hash::mix64};

/// One backend as the builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Written into the table (the backend id).
    pub id: u32,
    /// What its permutation is drawn from: its address and port (`ipv4`, `ipv6`).
    pub identity: u64,
    /// Weight; 0 takes no slots.
    pub weight: u32,
}

impl MaglevBackend {
    /// An IPv4 backend; address and port in network byte order (as in `Backend`). The
    /// identity is the address and port side by side, as it has always been, so every
    /// LB host of a cluster builds the same table across versions.
    pub const fn ipv4(id: u32, addr: u32, port: u16, weight: u32) -> Self {
        Self {
            id,
            identity: ((u32::from_be(addr) as u64) << 16) | u16::from_be(port) as u64,
            weight,
        }
    }

    /// An IPv6 backend; port in network byte order. Its 128-bit address and the port are
    /// mixed into 64 bits (a listener's backends are all of its family, so IPv4 and IPv6
    /// identities never meet in one table).
    pub const fn ipv6(id: u32, addr: [u8; 16], port: u16, weight: u32) -> Self {
        let bits = u128::from_be_bytes(addr);
        let identity =
            mix64((bits >> 64) as u64 ^ mix64(bits as u64 ^ ((u16::from_be(port) as u64) << 48)));
        Self {
            id,
            identity,
            weight,
        }
    }

    const fn identity(&self) -> u64 {
        self.identity
    }
}

/// Fills `table` (its length must be prime, e.g. `MAGLEV_TABLE_SIZE`, and below 2^31)
/// with backend ids. With no backend of non-zero weight every slot is `NO_BACKEND`.
pub fn build(backends: &[MaglevBackend], table: &mut [u32]) {
    let m = table.len() as u32;
    let mut members: Vec<MaglevBackend> =
        backends.iter().copied().filter(|b| b.weight > 0).collect();
    if members.is_empty() || m < 2 {
        table.fill(NO_BACKEND);
        return;
    }
    // From here on every slot is claimed exactly once, so the table needs no clearing.
    // Order by identity so the table does not depend on configuration order.
    members.sort_by_key(MaglevBackend::identity);
    let max_weight = members.iter().map(|b| b.weight).max().unwrap_or(1);

    // Compact per-backend state (24 bytes), so the walk over all backends stays in cache.
    struct Walker {
        id: u32,
        weight: u32,
        pos: u32,
        skip: u32,
        credit: u32,
        /// `skip`'s inverse modulo `m`, computed when first needed (0: not yet).
        skip_inverse: u32,
    }
    let mut walkers: Vec<Walker> = members
        .iter()
        .map(|b| {
            let h = mix64(b.identity() ^ 0x6d61_676c_6576_0001);
            let g = mix64(b.identity() ^ 0x6d61_676c_6576_0002);
            Walker {
                id: b.id,
                weight: b.weight,
                pos: (h % u64::from(m)) as u32,
                skip: (g % u64::from(m - 1)) as u32 + 1,
                credit: 0,
                skip_inverse: 0,
            }
        })
        .collect();

    // Which slots are taken, one bit each: 8 KiB stays in L1 while the 256 KiB table is
    // only written.
    let mut taken = vec![0u64; (m as usize).div_ceil(64)];
    // The last few slots are found differently. Probing needs m/free tries per claim, so
    // the tail would cost m·ln(m) probes (over half of all of them for m = 65537); with
    // few free slots left it is cheaper to ask, for every free slot, how many steps of
    // this backend's permutation away it is, and take the nearest: the same slot probing
    // would reach first, so the table is identical.
    let tail = TAIL_SLOTS.min(m);
    let mut free: Vec<u32> = Vec::new();
    let modulo = Barrett::new(m);
    let mut filled = 0u32;
    loop {
        for w in &mut walkers {
            w.credit += w.weight;
            if w.credit < max_weight {
                continue;
            }
            w.credit -= max_weight;
            let slot = if m - filled > tail {
                // Claim the next free slot of this backend's permutation.
                loop {
                    let slot = w.pos;
                    w.pos += w.skip;
                    if w.pos >= m {
                        w.pos -= m;
                    }
                    let (word, bit) = ((slot / 64) as usize, slot % 64);
                    if taken[word] & (1 << bit) == 0 {
                        taken[word] |= 1 << bit;
                        break slot;
                    }
                }
            } else {
                if free.is_empty() {
                    free = free_slots(&taken, m);
                }
                if w.skip_inverse == 0 {
                    w.skip_inverse = inverse_mod(w.skip, m);
                }
                // Steps from pos to s along the permutation: (s - pos) / skip mod m.
                let steps = |s: u32| {
                    let ahead = if s >= w.pos { s - w.pos } else { s + m - w.pos };
                    modulo.of(u64::from(ahead) * u64::from(w.skip_inverse))
                };
                let mut nearest = 0;
                let mut fewest = u64::MAX;
                for (i, &s) in free.iter().enumerate() {
                    let d = steps(s);
                    if d < fewest {
                        (nearest, fewest) = (i, d);
                    }
                }
                let slot = free.swap_remove(nearest);
                w.pos = ((u64::from(slot) + u64::from(w.skip)) % u64::from(m)) as u32;
                slot
            };
            table[slot as usize] = w.id;
            filled += 1;
            if filled == m {
                return;
            }
        }
    }
}

/// Below this many free slots the builder stops probing (see `build`). Measured on
/// m = 65537 with 10 to 10,000 backends: 128 to 400 all build within 5 % of the best;
/// probing costs about m/free probes per claim, the search `free` multiplies.
const TAIL_SLOTS: u32 = 256;

/// `x mod m` for `x < 2^62` with a multiply instead of a divide: the search does one per
/// free slot per claim, and a 64-bit divide costs as much as a dozen probes.
struct Barrett {
    m: u64,
    /// floor(2^64 / m)
    reciprocal: u64,
}

impl Barrett {
    fn new(m: u32) -> Self {
        let m = u64::from(m.max(1));
        Self {
            m,
            reciprocal: (u128::from(u64::MAX) / u128::from(m)) as u64,
        }
    }

    fn of(&self, x: u64) -> u64 {
        // The quotient estimate is at most 2 short of the truth for x < 2^62.
        let quotient = ((u128::from(x) * u128::from(self.reciprocal)) >> 64) as u64;
        let mut r = x - quotient * self.m;
        while r >= self.m {
            r -= self.m;
        }
        r
    }
}

/// The slots below `m` whose bit in `taken` is clear.
fn free_slots(taken: &[u64], m: u32) -> Vec<u32> {
    let mut free = Vec::new();
    for (word_index, &word) in taken.iter().enumerate() {
        let mut clear = !word;
        while clear != 0 {
            let slot = word_index as u32 * 64 + clear.trailing_zeros();
            if slot < m {
                free.push(slot);
            }
            clear &= clear - 1;
        }
    }
    free
}

/// Whether `n` is prime (trial division: table sizes are checked once, at config time).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d as u64 * d as u64 <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// `a`'s multiplicative inverse modulo the prime `m` (`a` in 1..m), by extended Euclid.
fn inverse_mod(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    t0.rem_euclid(i64::from(m)) as u32
}

/// Convenience for callers that want an owned table of `size` slots.
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let mut table = vec![NO_BACKEND; size as usize];
    build(backends, &mut table);
    table
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::MAGLEV_TABLE_SIZE;

    fn backend(id: u32, last_octet: u8, weight: u32) -> MaglevBackend {
        MaglevBackend::ipv4(
            id,
            u32::from_ne_bytes([198, 18, 1, last_octet]),
            8080u16.to_be(),
            weight,
        )
    }

    fn shares(table: &[u32]) -> HashMap<u32, f64> {
        let mut counts: HashMap<u32, f64> = HashMap::new();
        for &id in table {
            *counts.entry(id).or_default() += 1.0;
        }
        counts
            .values_mut()
            .for_each(|c| *c = *c * 100.0 / table.len() as f64);
        counts
    }

    fn assert_weight_shares(backends: &[MaglevBackend], table: &[u32]) {
        assert!(
            table.iter().all(|&s| s != NO_BACKEND),
            "every slot is filled"
        );
        let total: u32 = backends.iter().map(|b| b.weight).sum();
        let got = shares(table);
        for b in backends {
            let want = f64::from(b.weight) * 100.0 / f64::from(total);
            let have = got.get(&b.id).copied().unwrap_or(0.0);
            assert!(
                (have - want).abs() <= 0.1,
                "backend {} has {have:.3}% want {want:.3}%",
                b.id
            );
        }
    }

    #[test]
    fn every_slot_filled_and_shares_follow_weights() {
        let sets: Vec<Vec<MaglevBackend>> = vec![
            vec![backend(0, 1, 100)],
            vec![backend(0, 1, 100), backend(1, 2, 50), backend(2, 3, 50)],
            (0..10)
                .map(|i| backend(i, i as u8 + 1, 10 * (i + 1)))
                .collect(),
            (0..100)
                .map(|i| backend(i, i as u8, 1 + (i * 37) % 100))
                .collect(),
        ];
        for set in sets {
            let table = build_table(&set, MAGLEV_TABLE_SIZE);
            assert_weight_shares(&set, &table);
        }
    }

    #[test]
    fn weight_zero_takes_no_slot_and_empty_is_empty() {
        let set = [backend(0, 1, 100), backend(1, 2, 0)];
        let table = build_table(&set, MAGLEV_TABLE_SIZE);
        assert!(table.iter().all(|&s| s == 0));
        let none = build_table(&[backend(0, 1, 0)], 13);
        assert!(none.iter().all(|&s| s == NO_BACKEND));
    }

    #[test]
    fn independent_of_order_and_ids_follow_identity() {
        let a = [backend(0, 1, 100), backend(1, 2, 70), backend(2, 3, 30)];
        let b = [backend(2, 3, 30), backend(0, 1, 100), backend(1, 2, 70)];
        assert_eq!(
            build_table(&a, MAGLEV_TABLE_SIZE),
            build_table(&b, MAGLEV_TABLE_SIZE)
        );
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_share() {
        for n in [3u32, 10, 50] {
            let set: Vec<_> = (0..n).map(|i| backend(i, i as u8 + 1, 100 - i)).collect();
            let before = build_table(&set, MAGLEV_TABLE_SIZE);
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<_> = set.iter().copied().filter(|b| b.id != removed).collect();
                let after = build_table(&rest, MAGLEV_TABLE_SIZE);
                let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
                let moved_pct = moved as f64 * 100.0 / f64::from(MAGLEV_TABLE_SIZE);
                let total: u32 = set.iter().map(|b| b.weight).sum();
                let share = f64::from(set[removed as usize].weight) * 100.0 / f64::from(total);
                assert!(
                    moved_pct <= share + 1.0,
                    "n={n} removed={removed}: moved {moved_pct:.2}% > share {share:.2}% + 1"
                );
            }
        }
    }

    /// Maglev as the paper writes it: every claim probes until it finds a free slot.
    fn probing_only(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
        let mut members: Vec<_> = backends.iter().copied().filter(|b| b.weight > 0).collect();
        members.sort_by_key(MaglevBackend::identity);
        let mut table = vec![NO_BACKEND; m as usize];
        let Some(max_weight) = members.iter().map(|b| b.weight).max() else {
            return table;
        };
        let mut state: Vec<(u64, u64, u32)> = members
            .iter()
            .map(|b| {
                let h = mix64(b.identity() ^ 0x6d61_676c_6576_0001);
                let g = mix64(b.identity() ^ 0x6d61_676c_6576_0002);
                (h % u64::from(m), g % u64::from(m - 1) + 1, 0)
            })
            .collect();
        let mut filled = 0;
        while filled < m {
            for (b, (pos, skip, credit)) in members.iter().zip(&mut state) {
                *credit += b.weight;
                if *credit < max_weight {
                    continue;
                }
                *credit -= max_weight;
                while table[*pos as usize] != NO_BACKEND {
                    *pos = (*pos + *skip) % u64::from(m);
                }
                table[*pos as usize] = b.id;
                *pos = (*pos + *skip) % u64::from(m);
                filled += 1;
                if filled == m {
                    break;
                }
            }
        }
        table
    }

    #[test]
    fn the_tail_search_builds_the_table_probing_would() {
        for n in [1u32, 2, 7, 100, 1500] {
            let set: Vec<_> = (0..n)
                .map(|i| {
                    MaglevBackend::ipv4(i, (0xc612_0000 + i).to_be(), 80u16.to_be(), (i * 37) % 101)
                })
                .collect();
            for m in [2u32, 3, 251, 257, 4099, MAGLEV_TABLE_SIZE] {
                assert_eq!(build_table(&set, m), probing_only(&set, m), "n={n} m={m}");
            }
        }
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        for p in [
            crate::MAGLEV_TABLE_SIZE_MIN,
            MAGLEV_TABLE_SIZE,
            655_373,
            crate::MAGLEV_TABLE_SIZE_MAX,
        ] {
            assert!(is_prime(p), "{p}");
        }
        assert!(!is_prime(655_370) && !is_prime(65_535) && !is_prime(1021 * 1021));
    }

    #[test]
    fn inverse_and_barrett_modulo() {
        let m = MAGLEV_TABLE_SIZE;
        for a in [1, 2, 3, 1000, m - 2, m - 1] {
            assert_eq!(
                u64::from(a) * u64::from(inverse_mod(a, m)) % u64::from(m),
                1
            );
        }
        let modulo = Barrett::new(m);
        for x in [0u64, 1, 65536, 65537, 65538, (1 << 34) - 1, (1 << 62) - 1] {
            assert_eq!(modulo.of(x), x % u64::from(m), "{x}");
        }
    }
}
