//! The data plane's side of `lb_common::flow_filter`: a SYN asks the filter before it
//! looks up `FLOWS` (`FLOWS6`), and every insert into either sets its key's bit in both
//! bitmaps.

use core::intrinsics::{AtomicOrdering, atomic_or};

use lb_common::flow_filter::{
    FLOW_FILTER_ACTIVE, FLOW_FILTER_CAPACITY, FilterKey, flow_filter_slot, flow_filter_words_at,
};

use crate::maps::FLOW_FILTER;

/// A header word (`lb_common::flow_filter`); 0 when missing.
#[inline(always)]
fn header(index: u32) -> u64 {
    FLOW_FILTER.get(index).map_or(0, |w| *w)
}

/// False only when `key` is certainly not in `FLOWS`.
#[inline(always)]
pub fn may_hold<K: FilterKey>(key: &K) -> bool {
    let capacity = header(FLOW_FILTER_CAPACITY);
    let active = header(FLOW_FILTER_ACTIVE) & 1;
    let words = header(flow_filter_words_at(active));
    if capacity == 0 || words == 0 {
        return true;
    }
    let (index, bit) = flow_filter_slot(key, active, words, capacity);
    FLOW_FILTER.get(index).is_none_or(|w| *w & bit != 0)
}

/// Records that `key` was just inserted into `FLOWS`, in both bitmaps: the one being
/// rebuilt must not miss it either. Each bitmap's size is read after the insert: a
/// rebuild that resizes a bitmap publishes its size before it clears it and walks the
/// table, so an insert that read the old size is one the walk finds.
#[inline(always)]
pub fn note_insert<K: FilterKey>(key: &K) {
    let capacity = header(FLOW_FILTER_CAPACITY);
    if capacity == 0 {
        return;
    }
    for which in 0..2 {
        let words = header(flow_filter_words_at(which));
        if words == 0 {
            continue;
        }
        let (index, bit) = flow_filter_slot(key, which, words, capacity);
        if let Some(w) = FLOW_FILTER.get_ptr_mut(index) {
            // SAFETY: an array map value, live as long as the map. Atomic: other CPUs and
            // the controller's rebuild set bits of the same word.
            unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit) };
        }
    }
}
