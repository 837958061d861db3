//! The memory figures of `lb_ctl::sizing` (the sizing tables of docs/config.md) against
//! what the kernel accounts for the maps of a loaded data plane (`memlock` in
//! `/proc/self/fdinfo`, the kernel's own `map_mem_usage`, Linux 6.4 and later).

use std::{fs, os::fd::AsRawFd as _};

use lb_ctl::{
    dataplane::{DataPlane, LoadOptions, MapSizes},
    sizing::{self, Kind},
};
use lb_tests::{TEST_OBJECT, require_root_and_bpf, unique_prefix};

fn memlock(fdinfo: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .unwrap_or_else(|| panic!("no memlock in fdinfo:\n{fdinfo}"))
        .trim()
        .parse()
        .expect("memlock is a number")
}

#[test]
fn the_sizing_figures_are_what_the_kernel_accounts() {
    if !require_root_and_bpf("sizing") {
        return;
    }
    // A Maglev array of its own size, as `maglev_slots` sets it.
    let sizes = MapSizes {
        maglev_slots: 1_000_006,
        ..MapSizes::new(1 << 18, 8, 1000)
    };
    let pins = std::path::PathBuf::from("/sys/fs/bpf").join(unique_prefix("sz"));
    fs::create_dir_all(&pins).expect("a folder on bpffs");
    let cpus = sizing::possible_cpus().expect("/sys/devices/system/cpu/possible");
    let result = std::panic::catch_unwind(|| {
        let _dataplane = DataPlane::load_object(
            TEST_OBJECT,
            &LoadOptions {
                sizes,
                map_pin_dir: Some(pins.clone()),
                verifier_log_dir: None,
            },
        )
        .expect("loading the data plane");
        let mut compared = 0;
        println!("map                kernel (memlock)   lb_ctl::sizing   ({cpus} possible CPUs)");
        for m in sizing::data_plane(&sizes, cpus) {
            // Maps without preallocation hold what was put in them; the figures count
            // them full.
            if matches!(m.kind, Kind::HashNoPrealloc | Kind::LpmTrie | Kind::Small) {
                continue;
            }
            let map = aya::maps::MapData::from_pin(pins.join(m.name))
                .unwrap_or_else(|e| panic!("{}: {e}", m.name));
            let fd = std::os::fd::AsFd::as_fd(map.fd()).as_raw_fd();
            let kernel =
                memlock(&fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo"));
            println!("{:<18} {kernel:>16}   {:>14}", m.name, m.bytes);
            // The map's own header and lock counters are left out of the figures: a few
            // hundred bytes to a few KiB.
            let slack = 4096 + u64::from(cpus) * 64;
            assert!(
                kernel >= m.bytes && kernel - m.bytes <= slack,
                "{}: the kernel accounts {kernel} bytes, lb_ctl::sizing says {}",
                m.name,
                m.bytes
            );
            compared += 1;
        }
        assert!(compared >= 12, "compared {compared} maps");
    });
    let _ = fs::remove_dir_all(&pins);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
