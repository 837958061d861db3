//! The controller's side of `lb_common::flow_filter`: every flow-table sweep rebuilds the
//! bitmap the data plane does not read from the keys it walks, then makes it the one read.
//! Keys evicted or expired since the last rebuild stop costing their SYN-time lookup.

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering, fence},
};

use lb_common::flow_filter::{
    FLOW_FILTER_ACTIVE, FLOW_FILTER_CAPACITY, FLOW_FILTER_HEADER_WORDS, FLOW_FILTER_KEYS,
    FilterKey, flow_filter_bitmap_words, flow_filter_slot, flow_filter_words_at,
    flow_filter_words_for,
};

const HEADER: usize = FLOW_FILTER_HEADER_WORDS as usize;

/// One rebuild at a time: a second one clearing the idle bitmap while the first is about
/// to swap it in would leave keys out of the bitmap read (the background sweep and one
/// run in place for a request may overlap).
static REBUILDING: Mutex<()> = Mutex::new(());

fn header(words: &[AtomicU64], index: u32) -> u64 {
    words
        .get(index as usize)
        .map_or(0, |w| w.load(Ordering::Acquire))
}

/// Sizes a freshly created filter for a flow table of `flow_table_size` entries: both
/// bitmaps at the smallest size (the table is empty). One already sized (a pinned filter,
/// re-adopted) is left as it is, but for one of the layout before bitmaps had sizes of
/// their own, whose single size (the capacity) both bitmaps take.
pub fn size(words: &[AtomicU64], flow_table_size: u32) {
    let capacity = u64::from(flow_filter_bitmap_words(flow_table_size));
    if words.len() < HEADER + 2 * capacity as usize {
        return;
    }
    let sizes = [0, 1].map(|which| &words[flow_filter_words_at(which) as usize]);
    let first = match words[FLOW_FILTER_CAPACITY as usize].compare_exchange(
        0,
        capacity,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => flow_filter_words_for(0, capacity),
        // The earlier layout kept the capacity here and filled both bitmaps to it.
        Err(adopted) if sizes.iter().all(|w| w.load(Ordering::Acquire) == 0) => adopted,
        Err(_) => return,
    };
    for w in sizes {
        w.store(first, Ordering::Release);
    }
}

/// A rebuild under way of the idle bitmap.
pub struct Rebuild<'a> {
    words: &'a [AtomicU64],
    capacity: u64,
    /// The words the rebuilt bitmap uses.
    used: u64,
    idle: u64,
    keys: AtomicU64,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl<'a> Rebuild<'a> {
    /// Sizes the idle bitmap for the keys the last rebuild walked, then clears it. Both
    /// must come before the walk reads the flow table: a key inserted after that read
    /// began has its bit set by the data plane (in both bitmaps, each at the size it reads
    /// after the insert), one inserted before is found by the walk. None: the filter is
    /// not sized.
    pub fn start(words: &'a [AtomicU64]) -> Option<Self> {
        let capacity = header(words, FLOW_FILTER_CAPACITY);
        if capacity == 0 || words.len() < HEADER + 2 * capacity as usize {
            return None;
        }
        // A rebuild that panicked left the idle bitmap half-built, which the next one
        // clears anyway: the lock's poison carries nothing.
        let guard = REBUILDING.lock().unwrap_or_else(|p| p.into_inner());
        let active = header(words, FLOW_FILTER_ACTIVE) & 1;
        let idle = 1 - active;
        let used = flow_filter_words_for(header(words, FLOW_FILTER_KEYS), capacity);
        words[flow_filter_words_at(idle) as usize].store(used, Ordering::Release);
        fence(Ordering::SeqCst);
        let first = HEADER + (idle * capacity) as usize;
        for w in &words[first..first + used as usize] {
            w.store(0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        Some(Self {
            words,
            capacity,
            used,
            idle,
            keys: AtomicU64::new(0),
            _one_at_a_time: guard,
        })
    }

    /// Sets `key`'s bit (a key of either family). Atomic: the data plane sets bits of the
    /// same words meanwhile.
    pub fn add<K: FilterKey>(&self, key: &K) {
        self.keys.fetch_add(1, Ordering::Relaxed);
        let (index, bit) = flow_filter_slot(key, self.idle, self.used, self.capacity);
        if let Some(w) = self.words.get(index as usize) {
            w.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Makes the rebuilt bitmap the one the data plane reads, and leaves the count of
    /// keys walked for the next rebuild to size for.
    pub fn finish(self) {
        self.words[FLOW_FILTER_KEYS as usize].store(self.keys.into_inner(), Ordering::Relaxed);
        self.words[FLOW_FILTER_ACTIVE as usize].store(self.idle, Ordering::Release);
    }
}

/// Whether the bitmap the data plane reads has `key`'s bit (what it asks for a SYN).
pub fn may_hold<K: FilterKey>(words: &[AtomicU64], key: &K) -> bool {
    let capacity = header(words, FLOW_FILTER_CAPACITY);
    let active = header(words, FLOW_FILTER_ACTIVE) & 1;
    let used = header(words, flow_filter_words_at(active));
    if capacity == 0 || used == 0 {
        return true;
    }
    let (index, bit) = flow_filter_slot(key, active, used, capacity);
    words
        .get(index as usize)
        .is_none_or(|w| w.load(Ordering::Relaxed) & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{FlowKey, FlowKey6, flow_filter::flow_filter_entries};

    /// The words each bitmap uses now.
    fn bitmap_words(words: &[AtomicU64]) -> [u64; 2] {
        [0, 1].map(|which| header(words, flow_filter_words_at(which)))
    }

    fn key(i: u32) -> FlowKey {
        FlowKey::new(0xc612_0000 + i, 0xc613_0064, (40_000 + i) as u16, 80, 6)
    }

    /// What the data plane does on an insert (`lb-ebpf/src/flow_filter.rs`).
    fn insert<K: FilterKey>(words: &[AtomicU64], key: &K) {
        let capacity = header(words, FLOW_FILTER_CAPACITY);
        for which in 0..2 {
            let used = header(words, flow_filter_words_at(which));
            let (index, bit) = flow_filter_slot(key, which, used, capacity);
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
            header(&words, FLOW_FILTER_CAPACITY),
            u64::from(flow_filter_bitmap_words(4096))
        );
    }

    /// Each rebuild sizes its bitmap for the keys the one before walked: small while the
    /// table is nearly empty (the bitmap stays in cache), as large as the capacity once it
    /// fills. Through every resize a key in the table keeps its bit in the bitmap read.
    #[test]
    fn bitmaps_follow_the_table_from_nearly_empty_to_full_and_back() {
        let table = 1u32 << 20;
        let capacity = u64::from(flow_filter_bitmap_words(table));
        let words: Vec<AtomicU64> = (0..flow_filter_entries(table))
            .map(|_| AtomicU64::new(0))
            .collect();
        size(&words, table);
        let smallest = flow_filter_words_for(0, capacity);
        assert!(smallest < capacity);
        assert_eq!(bitmap_words(&words), [smallest, smallest]);

        // The table fills: every key is inserted (bits set at each bitmap's size), then
        // two sweeps walk it, the first still sizing for an empty table.
        let n = 1u32 << 20;
        let keys: Vec<FlowKey> = (0..n)
            .map(|i| {
                FlowKey::new(
                    0xc612_0000 + (i >> 10),
                    0xc613_0064,
                    (i & 1023) as u16,
                    80,
                    6,
                )
            })
            .collect();
        for k in &keys {
            insert(&words, k);
        }
        for _ in 0..2 {
            let rebuild = Rebuild::start(&words).unwrap();
            for k in &keys {
                rebuild.add(k);
            }
            rebuild.finish();
            assert!(keys.iter().all(|k| may_hold(&words, k)));
        }
        let active = header(&words, FLOW_FILTER_ACTIVE);
        assert_eq!(
            header(&words, flow_filter_words_at(active)),
            capacity,
            "sized for the million keys the first sweep walked"
        );
        // A key inserted while the bitmap is being resized, after the walk: still held.
        let rebuild = Rebuild::start(&words).unwrap();
        let late = FlowKey::new(0xc612_ffff, 0xc613_0064, 4242, 80, 6);
        insert(&words, &late);
        rebuild.finish();
        assert!(may_hold(&words, &late));

        // Emptied: the next rebuild still sizes for the million it last walked (none now),
        // the one after for none.
        for _ in 0..2 {
            Rebuild::start(&words).unwrap().finish();
        }
        let active = header(&words, FLOW_FILTER_ACTIVE);
        assert_eq!(header(&words, flow_filter_words_at(active)), smallest);
        let held = keys
            .iter()
            .take(10_000)
            .filter(|k| may_hold(&words, *k))
            .count();
        assert_eq!(held, 0, "gone keys forgotten");
    }

    /// A filter pinned by the layout before bitmaps had sizes of their own: one size, in
    /// the word that now holds the capacity, both bitmaps filled to it. Adopted as it is.
    #[test]
    fn a_filter_of_the_earlier_layout_is_adopted_with_its_bits() {
        let words: Vec<AtomicU64> = (0..flow_filter_entries(4096))
            .map(|_| AtomicU64::new(0))
            .collect();
        let capacity = u64::from(flow_filter_bitmap_words(4096));
        words[FLOW_FILTER_CAPACITY as usize].store(capacity, Ordering::Relaxed);
        for which in 0..2 {
            let (index, bit) = flow_filter_slot(&key(7), which, capacity, capacity);
            words[index as usize].fetch_or(bit, Ordering::Relaxed);
        }
        size(&words, 4096);
        assert_eq!(bitmap_words(&words), [capacity, capacity]);
        assert!(may_hold(&words, &key(7)));
        assert!(!may_hold(&words, &key(8)));
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
