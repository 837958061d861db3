//! The data plane's side of `lb_common::flow_filter`: a SYN asks the filter before it
//! looks up `FLOWS` (`FLOWS6`), and every insert into either sets its key's bit in both
//! bitmaps.

use core::intrinsics::{AtomicOrdering, atomic_or};

use lb_common::flow_filter::{FLOW_FILTER_ACTIVE, FLOW_FILTER_WORDS, FilterKey, flow_filter_slot};

use crate::maps::FLOW_FILTER;

/// Words per bitmap, 0 when the controller has not sized the filter.
#[inline(always)]
fn words() -> u64 {
    FLOW_FILTER.get(FLOW_FILTER_WORDS).map_or(0, |w| *w)
}

/// False only when `key` is certainly not in `FLOWS`.
#[inline(always)]
pub fn may_hold<K: FilterKey>(key: &K) -> bool {
    let words = words();
    if words == 0 {
        return true;
    }
    let active = FLOW_FILTER.get(FLOW_FILTER_ACTIVE).map_or(0, |w| *w);
    let (index, bit) = flow_filter_slot(key, active, words);
    FLOW_FILTER.get(index).is_none_or(|w| *w & bit != 0)
}

/// Records that `key` was just inserted into `FLOWS`, in both bitmaps: the one being
/// rebuilt must not miss it either.
#[inline(always)]
pub fn note_insert<K: FilterKey>(key: &K) {
    let words = words();
    if words == 0 {
        return;
    }
    for which in 0..2 {
        let (index, bit) = flow_filter_slot(key, which, words);
        if let Some(w) = FLOW_FILTER.get_ptr_mut(index) {
            // SAFETY: an array map value, live as long as the map. Atomic: other CPUs and
            // the controller's rebuild set bits of the same word.
            unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit) };
        }
    }
}
