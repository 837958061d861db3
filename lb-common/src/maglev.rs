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
    /// Address, network byte order (as in `Backend::addr`).
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Weight; 0 takes no slots.
    pub weight: u32,
}

impl MaglevBackend {
    fn identity(&self) -> u64 {
        (u64::from(u32::from_be(self.addr)) << 16) | u64::from(u16::from_be(self.port))
    }
}

/// Fills `table` (its length must be prime, e.g. `MAGLEV_TABLE_SIZE`, and below 2^31)
/// with backend ids. With no backend of non-zero weight every slot is `NO_BACKEND`.
pub fn build(backends: &[MaglevBackend], table: &mut [u32]) {
    table.fill(NO_BACKEND);
    let m = table.len() as u32;
    let mut members: Vec<MaglevBackend> =
        backends.iter().copied().filter(|b| b.weight > 0).collect();
    if members.is_empty() || m < 2 {
        return;
    }
    // Order by identity so the table does not depend on configuration order.
    members.sort_by_key(MaglevBackend::identity);
    let max_weight = members.iter().map(|b| b.weight).max().unwrap_or(1);

    // Compact per-backend state (20 bytes), so the walk over all backends stays in cache.
    struct Walker {
        id: u32,
        weight: u32,
        pos: u32,
        skip: u32,
        credit: u32,
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
            }
        })
        .collect();

    // Which slots are taken, one bit each: 8 KiB stays in L1 while the 256 KiB table is
    // only written, so the probing near the end (most slots taken) stays cheap.
    let mut taken = vec![0u64; (m as usize).div_ceil(64)];
    let mut filled = 0u32;
    loop {
        for w in &mut walkers {
            w.credit += w.weight;
            if w.credit < max_weight {
                continue;
            }
            w.credit -= max_weight;
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
                    table[slot as usize] = w.id;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                return;
            }
        }
    }
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
        MaglevBackend {
            id,
            addr: u32::from_ne_bytes([198, 18, 1, last_octet]),
            port: 8080u16.to_be(),
            weight,
        }
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
}
