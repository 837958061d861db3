//! The controller's side of `lb_common::flow_filter`: every flow-table sweep rebuilds the
//! bitmap the data plane does not read from the keys it walks, then makes it the one read.
//! Keys evicted or expired since the last rebuild stop costing their SYN-time lookup.

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering, fence},
};

use lb_common::flow_filter::{
    FLOW_FILTER_ACTIVE, FLOW_FILTER_HEADER_WORDS, FLOW_FILTER_WORDS, FilterKey,
    flow_filter_bitmap_words, flow_filter_slot,
};

const HEADER: usize = FLOW_FILTER_HEADER_WORDS as usize;

/// One rebuild at a time: a second one clearing the idle bitmap while the first is about
/// to swap it in would leave keys out of the bitmap read (the background sweep and one
/// run in place for a request may overlap).
static REBUILDING: Mutex<()> = Mutex::new(());

/// Sizes a freshly created filter for a flow table of `flow_table_size` entries; one
/// already sized (a pinned filter, re-adopted) is left as it is.
pub fn size(words: &[AtomicU64], flow_table_size: u32) {
    if let Some(w) = words.get(FLOW_FILTER_WORDS as usize) {
        let per_bitmap = u64::from(flow_filter_bitmap_words(flow_table_size));
        if words.len() >= HEADER + 2 * per_bitmap as usize {
            let _ = w.compare_exchange(0, per_bitmap, Ordering::Release, Ordering::Relaxed);
        }
    }
}

/// A rebuild under way of the idle bitmap.
pub struct Rebuild<'a> {
    words: &'a [AtomicU64],
    per_bitmap: u64,
    idle: u64,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl<'a> Rebuild<'a> {
    /// Clears the idle bitmap. Must come before the walk reads the flow table: a key
    /// inserted after that read began has its bit set by the data plane (in both
    /// bitmaps), one inserted before is found by the walk. None: the filter is not sized.
    pub fn start(words: &'a [AtomicU64]) -> Option<Self> {
        let per_bitmap = words
            .get(FLOW_FILTER_WORDS as usize)?
            .load(Ordering::Acquire);
        if per_bitmap == 0 || words.len() < HEADER + 2 * per_bitmap as usize {
            return None;
        }
        // A rebuild that panicked left the idle bitmap half-built, which the next one
        // clears anyway: the lock's poison carries nothing.
        let guard = REBUILDING.lock().unwrap_or_else(|p| p.into_inner());
        let active = words[FLOW_FILTER_ACTIVE as usize].load(Ordering::Acquire) & 1;
        let idle = 1 - active;
        let first = HEADER + (idle * per_bitmap) as usize;
        for w in &words[first..first + per_bitmap as usize] {
            w.store(0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        Some(Self {
            words,
            per_bitmap,
            idle,
            _one_at_a_time: guard,
        })
    }

    /// Sets `key`'s bit (a key of either family). Atomic: the data plane sets bits of the
    /// same words meanwhile.
    pub fn add<K: FilterKey>(&self, key: &K) {
        let (index, bit) = flow_filter_slot(key, self.idle, self.per_bitmap);
        if let Some(w) = self.words.get(index as usize) {
            w.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Makes the rebuilt bitmap the one the data plane reads.
    pub fn finish(self) {
        self.words[FLOW_FILTER_ACTIVE as usize].store(self.idle, Ordering::Release);
    }
}

/// Whether the bitmap the data plane reads has `key`'s bit (what it asks for a SYN).
pub fn may_hold<K: FilterKey>(words: &[AtomicU64], key: &K) -> bool {
    let per_bitmap = words
        .get(FLOW_FILTER_WORDS as usize)
        .map_or(0, |w| w.load(Ordering::Acquire));
    if per_bitmap == 0 {
        return true;
    }
    let active = words[FLOW_FILTER_ACTIVE as usize].load(Ordering::Acquire);
    let (index, bit) = flow_filter_slot(key, active, per_bitmap);
    words
        .get(index as usize)
        .is_none_or(|w| w.load(Ordering::Relaxed) & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{FlowKey, FlowKey6, flow_filter::flow_filter_entries};

    fn key(i: u32) -> FlowKey {
        FlowKey::new(0xc612_0000 + i, 0xc613_0064, (40_000 + i) as u16, 80, 6)
    }

    /// What the data plane does on an insert (`lb-ebpf/src/flow_filter.rs`).
    fn insert<K: FilterKey>(words: &[AtomicU64], key: &K) {
        let per_bitmap = words[FLOW_FILTER_WORDS as usize].load(Ordering::Relaxed);
        for which in 0..2 {
            let (index, bit) = flow_filter_slot(key, which, per_bitmap);
            words[index as usize].fetch_or(bit, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_rebuild_keeps_the_walked_keys_and_those_inserted_meanwhile_and_forgets_the_rest() {
        let words: Vec<AtomicU64> = (0..flow_filter_entries(4096))
            .map(|_| AtomicU64::new(0))
            .collect();
        assert!(
            may_hold(&words, &key(1)),
            "an unsized filter holds everything"
        );
        assert!(Rebuild::start(&words).is_none());
        size(&words, 4096);
        assert!(!may_hold(&words, &key(1)));
        for i in 0..100 {
            insert(&words, &key(i));
        }
        assert!((0..100).all(|i| may_hold(&words, &key(i))));

        // Keys 50.. left the table; the walk finds 0..50; 200 is inserted during it.
        let rebuild = Rebuild::start(&words).unwrap();
        assert!(
            (0..100).all(|i| may_hold(&words, &key(i))),
            "the bitmap read is untouched until the end"
        );
        for i in 0..50 {
            rebuild.add(&key(i));
        }
        insert(&words, &key(200));
        rebuild.finish();
        assert!((0..50).all(|i| may_hold(&words, &key(i))));
        assert!(may_hold(&words, &key(200)));
        let forgotten = (50..100).filter(|&i| !may_hold(&words, &key(i))).count();
        assert!(forgotten >= 45, "{forgotten} of 50 gone keys forgotten");

        // The next rebuild clears the other bitmap: nothing of the first is carried over
        // that the walk does not find again.
        let rebuild = Rebuild::start(&words).unwrap();
        rebuild.add(&key(0));
        rebuild.finish();
        assert!(may_hold(&words, &key(0)));
        assert!(!may_hold(&words, &key(200)) || !may_hold(&words, &key(1)));
        // Sizing again leaves a sized filter alone.
        size(&words, 1 << 20);
        assert_eq!(
            words[FLOW_FILTER_WORDS as usize].load(Ordering::Relaxed),
            u64::from(flow_filter_bitmap_words(4096))
        );
    }

    fn key6(i: u32) -> FlowKey6 {
        let addr = |last: u32| {
            [
                0x2001_0db8u32.to_be(),
                0x0018_0000u32.to_be(),
                0,
                last.to_be(),
            ]
        };
        FlowKey6 {
            src_addr: addr(0x8000_0000 + i),
            dst_addr: addr(0x100),
            src_port: (40_000 + i as u16).to_be(),
            dst_port: 80u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        }
    }

    /// Both families share the bitmaps: a rebuild that walked both tables keeps the keys
    /// of both, and forgets gone keys of both.
    #[test]
    fn ipv6_keys_are_kept_and_forgotten_as_ipv4_ones() {
        let words: Vec<AtomicU64> = (0..flow_filter_entries(4096))
            .map(|_| AtomicU64::new(0))
            .collect();
        size(&words, 4096);
        for i in 0..100 {
            insert(&words, &key6(i));
            insert(&words, &key(i));
        }
        assert!((0..100).all(|i| may_hold(&words, &key6(i)) && may_hold(&words, &key(i))));
        let rebuild = Rebuild::start(&words).unwrap();
        for i in 0..50 {
            rebuild.add(&key(i));
            rebuild.add(&key6(i));
        }
        rebuild.finish();
        assert!((0..50).all(|i| may_hold(&words, &key6(i)) && may_hold(&words, &key(i))));
        let forgotten = (50..100).filter(|&i| !may_hold(&words, &key6(i))).count();
        assert!(
            forgotten >= 45,
            "{forgotten} of 50 gone IPv6 keys forgotten"
        );
    }
}
