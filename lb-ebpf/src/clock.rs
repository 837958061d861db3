//! The data plane's clock: `bpf_ktime_get_coarse_ns`, the clock every timestamp in the
//! maps is in and the controller compares them with (`CLOCK_MONOTONIC_COARSE`).
//!
//! That clock only moves on a timer tick, yet reading it is a helper call through the
//! kernel's timekeeping (a seqlock, a conversion): in a profile of an established
//! packet, about a tenth of its time. The jiffies counter moves on the same tick and the verifier inlines
//! `bpf_jiffies64` to one load. So each CPU keeps the coarse time it last read with the
//! jiffies value it read it at, and reads the clock again only when jiffies have moved:
//! once per tick instead of once per packet. A CPU that reads in the instant between the
//! two updates of one tick keeps the previous tick's time until the next: one tick (1–10
//! ms) more behind than coarse time already is, for flow timeouts of seconds.

use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::CLOCK;

/// The current coarse monotonic time in ns.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cache) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: helper without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let cache = unsafe { &mut *cache };
    if cache.jiffies != jiffies {
        // SAFETY: helper without arguments.
        cache.ns = unsafe { bpf_ktime_get_coarse_ns() };
        cache.jiffies = jiffies;
    }
    cache.ns
}
