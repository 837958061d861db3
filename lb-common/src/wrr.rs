//! Selection sequences for the round-robin family of schedulers.
//!
//! `wrr` walks a smooth weighted sequence: backend i appears w_i/g times (g = gcd of the
//! weights) and its turns are spread evenly, at virtual times (k + ½)/w_i, so no backend
//! gets a burst of consecutive new flows. `rr` and `wlc` use each backend once.

use crate::SEQUENCE_TABLE_SIZE;

/// (backend id, weight). Weight-0 backends are left out of every sequence.
pub type Weighted = (u32, u32);

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Smooth weighted round-robin sequence of at most `max_len` entries.
///
/// If the reduced weights add up to more than `max_len`, each weight is scaled to
/// `1 + w * (max_len - n) / sum`, which keeps every backend in the sequence and bounds the
/// length by `max_len`.
pub fn weighted_sequence(backends: &[Weighted], max_len: u32) -> Vec<u32> {
    let members: Vec<Weighted> = backends.iter().copied().filter(|&(_, w)| w > 0).collect();
    if members.is_empty() {
        return Vec::new();
    }
    let g = members.iter().fold(0, |g, &(_, w)| gcd(g, u64::from(w)));
    let mut weights: Vec<u64> = members.iter().map(|&(_, w)| u64::from(w) / g).collect();
    let sum: u64 = weights.iter().sum();
    let n = weights.len() as u64;
    let max_len = u64::from(max_len);
    assert!(
        n <= max_len,
        "{n} backends do not fit a sequence of {max_len}"
    );
    if sum > max_len {
        weights
            .iter_mut()
            .for_each(|w| *w = 1 + *w * (max_len - n) / sum);
    }
    // One event per turn at virtual time (2k+1)/(2w); sort them by time, ties by position.
    let mut events: Vec<(u64, u64, usize)> = Vec::new(); // (2k+1, w, member index)
    for (i, &w) in weights.iter().enumerate() {
        for k in 0..w {
            events.push((2 * k + 1, w, i));
        }
    }
    events.sort_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)).then(a.2.cmp(&b.2)));
    events.into_iter().map(|(_, _, i)| members[i].0).collect()
}

/// Each backend with a non-zero weight once, in the given order (`rr`, `wlc`).
pub fn each_once(backends: &[Weighted]) -> Vec<u32> {
    backends
        .iter()
        .filter(|&&(_, w)| w > 0)
        .map(|&(id, _)| id)
        .take(SEQUENCE_TABLE_SIZE as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(seq: &[u32], id: u32) -> usize {
        seq.iter().filter(|&&x| x == id).count()
    }

    #[test]
    fn weights_reduce_by_gcd_and_shares_are_exact() {
        let seq = weighted_sequence(&[(0, 100), (1, 50), (2, 50)], SEQUENCE_TABLE_SIZE);
        assert_eq!(seq.len(), 4);
        assert_eq!((count(&seq, 0), count(&seq, 1), count(&seq, 2)), (2, 1, 1));
        let seq = weighted_sequence(&[(7, 3), (8, 2), (9, 0)], SEQUENCE_TABLE_SIZE);
        assert_eq!(seq.len(), 5);
        assert_eq!((count(&seq, 7), count(&seq, 8), count(&seq, 9)), (3, 2, 0));
    }

    #[test]
    fn turns_are_spread_not_bursty() {
        // 5:2 — the heavy backend never runs more than 3 in a row, across the wrap too
        // (a naive sequence runs 5).
        let seq = weighted_sequence(&[(0, 5), (1, 2)], SEQUENCE_TABLE_SIZE);
        let doubled: Vec<u32> = seq.iter().chain(seq.iter()).copied().collect();
        let longest = doubled
            .chunk_by(|a, b| a == b)
            .map(<[u32]>::len)
            .max()
            .unwrap();
        assert!(longest <= 3, "{seq:?}");
        // Equal weights alternate strictly.
        let seq = weighted_sequence(&[(0, 10), (1, 10), (2, 10)], SEQUENCE_TABLE_SIZE);
        assert_eq!(seq, vec![0, 1, 2]);
        // 100/50/50: every window of 4 holds 2, 1, 1.
        let seq = weighted_sequence(&[(0, 100), (1, 50), (2, 50)], SEQUENCE_TABLE_SIZE);
        assert_eq!(count(&seq, 0), 2);
        assert_ne!(seq[0], seq[1], "{seq:?}");
    }

    #[test]
    fn long_sequences_are_scaled_to_fit() {
        let backends: Vec<Weighted> = (0..1000).map(|i| (i, 1 + (i * 7919) % 100)).collect();
        let seq = weighted_sequence(&backends, 4096);
        assert!(seq.len() <= 4096);
        for &(id, _) in &backends {
            assert!(count(&seq, id) >= 1, "backend {id} kept");
        }
        // The heaviest backend still gets far more turns than the lightest.
        let heavy = backends.iter().max_by_key(|b| b.1).unwrap().0;
        let light = backends.iter().min_by_key(|b| b.1).unwrap().0;
        assert!(count(&seq, heavy) > 5 * count(&seq, light));
    }

    #[test]
    fn empty_and_zero_weights() {
        assert!(weighted_sequence(&[], 16).is_empty());
        assert!(weighted_sequence(&[(1, 0)], 16).is_empty());
        assert_eq!(each_once(&[(1, 0), (2, 5), (3, 100)]), vec![2, 3]);
    }
}
