//! `LISTENER_INDEX` kept beside `LISTENERS` (see `lb_common::ListenerSlot`): which IPv4
//! keys hash to each slot, and the order of writes that never changes a record a packet may
//! be reading.
//!
//! A slot with one key holds that key's listener in one of its two records and names it
//! in the slot's word. A change writes the other record, then the word; the old record may
//! still be read by packets that loaded the old word, so it is written again only after
//! every such packet is done: after an RCU grace period (XDP programs run inside RCU
//! read-side sections), which `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for.

use std::collections::BTreeMap;

use lb_common::{
    Listener, ListenerKey, SLOT_OWNED, SLOT_SECOND, SLOT_SHARED, listener_slot, slot_state,
    slot_word,
};

/// Where the slots live: the mapped array, or a test's memory.
pub(crate) trait SlotMemory {
    fn slots(&self) -> u32;
    fn word(&self, slot: u32) -> u64;
    fn record(&self, slot: u32, second: bool) -> Listener;
    fn write_record(&mut self, slot: u32, second: bool, listener: &Listener);
    /// Stores a slot's word whole, after the record writes before it.
    fn publish(&mut self, slot: u32, word: u64);
    /// Starts a wait for readers in the background and returns its number (they grow by
    /// one): once it has completed, no packet can still be reading a record it found
    /// before the call.
    fn start_barrier(&mut self) -> u64;
    /// The number of the last barrier completed (barriers complete in order).
    fn completed_barrier(&self) -> u64;
    /// Returns once barrier `n` has completed.
    fn wait_barrier(&mut self, n: u64);
}

pub(crate) struct ListenerIndex<M> {
    memory: M,
    bits: u32,
    /// The keys of each slot in use, with their listeners.
    keys: BTreeMap<u32, BTreeMap<ListenerKey, Listener>>,
    /// Records (slot, `second`) a slot's word stopped naming, with the barrier after which
    /// no packet that loaded the earlier word can still read them. A change waits only
    /// when it needs a record whose barrier has not completed: in the common case the
    /// barrier runs in the background, and an apply never pauses between its writes
    /// (which would widen the moments between them that packets see).
    unsettled: BTreeMap<(u32, bool), u64>,
}

impl<M: SlotMemory> ListenerIndex<M> {
    /// Takes over `memory` (which an earlier daemon may have filled, and packets may be
    /// reading) and makes every slot answer for `entries`, the contents of `LISTENERS`.
    pub(crate) fn new(
        memory: M,
        entries: impl IntoIterator<Item = (ListenerKey, Listener)>,
    ) -> Self {
        let bits = memory.slots().max(4).trailing_zeros();
        let mut index = Self {
            memory,
            bits,
            keys: BTreeMap::new(),
            unsettled: BTreeMap::new(),
        };
        for (key, listener) in entries {
            index
                .keys
                .entry(index.slot(&key))
                .or_default()
                .insert(key, listener);
        }
        // An earlier daemon's slots: packets may be reading any record it wrote lately.
        if (0..index.memory.slots()).any(|slot| index.memory.word(slot) != 0) {
            let barrier = index.memory.start_barrier();
            index.memory.wait_barrier(barrier);
        }
        for slot in 0..index.memory.slots() {
            index.settle(slot);
        }
        index
    }

    fn slot(&self, key: &ListenerKey) -> u32 {
        listener_slot(key, self.bits)
    }

    /// After `LISTENERS` holds `listener` under `key`.
    pub(crate) fn set(&mut self, key: ListenerKey, listener: Listener) {
        let slot = self.slot(&key);
        self.keys.entry(slot).or_default().insert(key, listener);
        self.settle(slot);
    }

    /// Before `key` leaves `LISTENERS`.
    pub(crate) fn remove(&mut self, key: &ListenerKey) {
        let slot = self.slot(key);
        if let Some(keys) = self.keys.get_mut(&slot) {
            keys.remove(key);
            if keys.is_empty() {
                self.keys.remove(&slot);
            }
        }
        self.settle(slot);
    }

    /// Makes `slot`'s word and records say what `keys` holds for it.
    fn settle(&mut self, slot: u32) {
        let current = self.memory.word(slot);
        let state = slot_state(current);
        let keys = self.keys.get(&slot);
        let word = match keys.map(|k| k.iter().collect::<Vec<_>>()).as_deref() {
            None | Some([]) => 0,
            Some([(key, listener)]) => {
                let owned = state & SLOT_OWNED != 0 && state & SLOT_SHARED == 0;
                let in_use = state & SLOT_SECOND != 0;
                if owned
                    && current == slot_word(key, state)
                    && self.memory.record(slot, in_use) == **listener
                {
                    return;
                }
                // The record the current word does not name; packets may still read it
                // through an earlier word until they are waited for.
                let spare = owned && !in_use;
                if let Some(&barrier) = self.unsettled.get(&(slot, spare)) {
                    if self.memory.completed_barrier() < barrier {
                        self.memory.wait_barrier(barrier);
                    }
                    let done = self.memory.completed_barrier();
                    self.unsettled.retain(|_, b| *b > done);
                }
                self.memory.write_record(slot, spare, listener);
                let second = if spare { SLOT_SECOND } else { 0 };
                slot_word(key, SLOT_OWNED | second)
            }
            Some(_) => slot_word(&ListenerKey::default(), SLOT_SHARED),
        };
        if word != current {
            self.memory.publish(slot, word);
            if state & SLOT_OWNED != 0 && state & SLOT_SHARED == 0 {
                let barrier = self.memory.start_barrier();
                self.unsettled
                    .insert((slot, state & SLOT_SECOND != 0), barrier);
            }
        }
    }

    #[cfg(test)]
    fn memory(&self) -> &M {
        &self.memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{SlotAnswer, slot_answer};

    /// Slots in memory, and what was done to them: which records packets may be reading
    /// (`readable`) is tracked to catch a write to one.
    #[derive(Default)]
    struct Memory {
        words: Vec<u64>,
        records: Vec<[Listener; 2]>,
        /// Per slot, the records a packet may be reading: named by the word now or since
        /// the last wait.
        readable: Vec<[bool; 2]>,
        waits: usize,
        writes: usize,
        /// Barriers started and completed: they complete only when a test says so
        /// (`complete_barriers`) or a change waits for one.
        started: u64,
        completed: u64,
    }

    impl Memory {
        fn new(slots: u32) -> Self {
            Self {
                words: vec![0; slots as usize],
                records: vec![[Listener::default(); 2]; slots as usize],
                readable: vec![[false; 2]; slots as usize],
                ..Self::default()
            }
        }

        /// What a packet to `key` finds: its listener, `LISTENERS` to ask, or nothing.
        fn lookup(&self, key: &ListenerKey, bits: u32) -> SlotAnswer {
            let slot = listener_slot(key, bits) as usize;
            slot_answer(self.words[slot], key)
        }
    }

    impl SlotMemory for Memory {
        fn slots(&self) -> u32 {
            self.words.len() as u32
        }
        fn word(&self, slot: u32) -> u64 {
            self.words[slot as usize]
        }
        fn record(&self, slot: u32, second: bool) -> Listener {
            self.records[slot as usize][usize::from(second)]
        }
        fn write_record(&mut self, slot: u32, second: bool, listener: &Listener) {
            assert!(
                !self.readable[slot as usize][usize::from(second)],
                "slot {slot}: record {} written while packets may read it",
                usize::from(second)
            );
            self.records[slot as usize][usize::from(second)] = *listener;
            self.writes += 1;
        }
        fn publish(&mut self, slot: u32, word: u64) {
            self.words[slot as usize] = word;
            let state = slot_state(word);
            if state & SLOT_OWNED != 0 && state & SLOT_SHARED == 0 {
                self.readable[slot as usize][usize::from(state & SLOT_SECOND != 0)] = true;
            }
        }
        fn start_barrier(&mut self) -> u64 {
            self.started += 1;
            self.started
        }
        fn completed_barrier(&self) -> u64 {
            self.completed
        }
        fn wait_barrier(&mut self, n: u64) {
            assert!(n <= self.started, "waiting for barrier {n}, never started");
            self.waits += 1;
            self.complete_barriers();
        }
    }

    impl Memory {
        /// Every barrier started completes: packets now read only what the words name.
        fn complete_barriers(&mut self) {
            self.completed = self.started;
            for (slot, word) in self.words.iter().enumerate() {
                let state = slot_state(*word);
                let owned = state & SLOT_OWNED != 0 && state & SLOT_SHARED == 0;
                let second = state & SLOT_SECOND != 0;
                self.readable[slot] = [owned && !second, owned && second];
            }
        }
    }

    fn key(host: u8, port: u16) -> ListenerKey {
        ListenerKey::new(
            u32::from_be_bytes([198, 18, 2, host]).to_be(),
            port.to_be(),
            6,
        )
    }

    fn listener(id: u32, scheduler: u8) -> Listener {
        Listener {
            id,
            scheduler,
            ..Listener::default()
        }
    }

    const BITS: u32 = 6;

    /// Two keys that share a slot of a 64-slot index.
    fn colliding() -> (ListenerKey, ListenerKey) {
        let mut seen = BTreeMap::new();
        for host in 0..=255 {
            for port in [80, 443, 8080] {
                let k = key(host, port);
                if let Some(other) = seen.insert(listener_slot(&k, BITS), k) {
                    return (other, k);
                }
            }
        }
        unreachable!("768 keys in 64 slots");
    }

    /// Every key finds its listener (from its slot or, shared, from `LISTENERS`), removed
    /// keys find nothing, and no record is rewritten while packets may read it (`Memory`
    /// asserts that), through adds, changes, collisions and removals.
    #[test]
    fn packets_find_what_listeners_holds_and_no_record_in_use_is_rewritten() {
        let mut index = ListenerIndex::new(Memory::new(1 << BITS), []);
        let (a, b) = colliding();
        let c = key(200, 53);
        let expect = |index: &ListenerIndex<Memory>, k: &ListenerKey, l: Option<Listener>| {
            let found = match index.memory().lookup(k, BITS) {
                SlotAnswer::Record(second) => {
                    Some(index.memory().record(listener_slot(k, BITS), second))
                }
                SlotAnswer::Ask => index.keys.values().find_map(|m| m.get(k).copied()),
                SlotAnswer::Absent => None,
            };
            assert_eq!(found, l, "{k:?}");
        };
        index.set(a, listener(1, 0));
        expect(&index, &a, Some(listener(1, 0)));
        expect(&index, &b, None);
        assert_eq!(index.memory().lookup(&a, BITS), SlotAnswer::Record(false));
        // A change goes to the other record; the next waits for readers of the first.
        index.set(a, listener(1, 1));
        assert_eq!(index.memory().lookup(&a, BITS), SlotAnswer::Record(true));
        assert_eq!(index.memory().waits, 0);
        index.set(a, listener(1, 2));
        assert_eq!(index.memory().waits, 1);
        expect(&index, &a, Some(listener(1, 2)));
        // Once the background barrier has completed, the next change does not wait.
        index.memory.complete_barriers();
        index.set(a, listener(1, 3));
        assert_eq!(index.memory().waits, 1, "no wait once the barrier is done");
        index.set(a, listener(1, 2));
        assert_eq!(index.memory().waits, 2);
        expect(&index, &a, Some(listener(1, 2)));
        // The same value again writes nothing.
        let writes = index.memory().writes;
        index.set(a, listener(1, 2));
        assert_eq!(index.memory().writes, writes);
        // A second key in the slot: both through `LISTENERS`.
        index.set(b, listener(2, 0));
        assert_eq!(index.memory().lookup(&a, BITS), SlotAnswer::Ask);
        expect(&index, &a, Some(listener(1, 2)));
        expect(&index, &b, Some(listener(2, 0)));
        index.set(c, listener(3, 0));
        expect(&index, &c, Some(listener(3, 0)));
        // Back to one key: its record again, written only once readers are done.
        index.remove(&a);
        expect(&index, &a, None);
        expect(&index, &b, Some(listener(2, 0)));
        assert!(matches!(
            index.memory().lookup(&b, BITS),
            SlotAnswer::Record(_)
        ));
        index.remove(&b);
        expect(&index, &b, None);
        assert_eq!(index.memory().word(listener_slot(&b, BITS)), 0);
        expect(&index, &c, Some(listener(3, 0)));
    }

    /// An index an earlier daemon left (stale keys, any record in use) is rebuilt from
    /// `LISTENERS` alone, after waiting for its readers.
    #[test]
    fn a_left_index_is_rebuilt_from_listeners() {
        let mut memory = Memory::new(1 << BITS);
        let stale = key(9, 80);
        let kept = key(10, 80);
        for (k, l) in [(stale, listener(7, 0)), (kept, listener(8, 0))] {
            let slot = listener_slot(&k, BITS);
            memory.write_record(slot, false, &l);
            memory.publish(slot, slot_word(&k, SLOT_OWNED));
        }
        let index = ListenerIndex::new(memory, [(kept, listener(8, 3))]);
        assert_eq!(index.memory().lookup(&stale, BITS), SlotAnswer::Absent);
        assert_eq!(
            index.memory().lookup(&kept, BITS),
            SlotAnswer::Record(true),
            "the changed listener goes to the record not in use"
        );
        assert_eq!(
            index.memory().record(listener_slot(&kept, BITS), true),
            listener(8, 3)
        );
        assert_eq!(index.memory().waits, 1);
    }
}
