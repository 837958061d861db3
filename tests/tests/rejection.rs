//! A program the kernel rejects gives a short, useful error, for real: tiny XDP objects
//! the verifier refuses go through `lb_ctl::verifier::load_checked`, and the daemon's own
//! program is rejected by pinning a map of the wrong type where it expects its redirect
//! map, which no verifier accepts. The message names the program, the errno, the
//! instruction count and the log's last lines; the full log is in the file it names.

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::{Ebpf, EbpfLoader, programs::Xdp};
use lb_ctl::{
    dataplane::DataPlaneError,
    verifier::{self, Rejection},
};
use lb_tests::{LbDaemon, Netns, client::TempDir, require_root_and_bpf, unique_prefix};

/// One BPF instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | dst;
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const JLT_IMM: u8 = 0xa5;
const EXIT: u8 = 0x95;

/// The smallest relocatable ELF object aya loads: one function `name` in section `xdp`,
/// a GPL license, a symbol table.
fn xdp_object(name: &str, code: &[[u8; 8]]) -> Vec<u8> {
    fn align(out: &mut Vec<u8>, to: usize) {
        out.resize(out.len().next_multiple_of(to), 0);
    }
    let text: Vec<u8> = code.concat();
    let strtab = format!("\0{name}\0");
    let shstrtab = "\0xdp\0license\0.symtab\0.strtab\0.shstrtab\0";
    let shname = |s: &str| shstrtab.find(&format!("\0{s}\0")).unwrap() as u32 + 1;

    let mut out = vec![0u8; 64];
    let text_at = out.len();
    out.extend_from_slice(&text);
    let license_at = out.len();
    out.extend_from_slice(b"GPL\0");
    align(&mut out, 8);
    let symtab_at = out.len();
    out.extend_from_slice(&[0u8; 24]);
    out.extend_from_slice(&1u32.to_le_bytes()); // st_name
    out.push(0x12); // STB_GLOBAL, STT_FUNC
    out.push(0);
    out.extend_from_slice(&1u16.to_le_bytes()); // section 1: xdp
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    let strtab_at = out.len();
    out.extend_from_slice(strtab.as_bytes());
    let shstrtab_at = out.len();
    out.extend_from_slice(shstrtab.as_bytes());
    align(&mut out, 8);
    let sections_at = out.len();

    // Each section header: name, type, flags, address (0), offset, size, link, info,
    // alignment, entry size. Types: 1 PROGBITS, 2 SYMTAB, 3 STRTAB; flags: 2 ALLOC, 4
    // EXECINSTR, 1 WRITE. The symbol table links to .strtab (4); its first global is 1.
    let section = |out: &mut Vec<u8>, head: [u32; 2], flags: u64, at: usize, size: usize| {
        out.extend_from_slice(&head[0].to_le_bytes());
        out.extend_from_slice(&head[1].to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&(at as u64).to_le_bytes());
        out.extend_from_slice(&(size as u64).to_le_bytes());
    };
    let tail = |out: &mut Vec<u8>, link: u32, info: u32, align: u64, entsize: u64| {
        out.extend_from_slice(&link.to_le_bytes());
        out.extend_from_slice(&info.to_le_bytes());
        out.extend_from_slice(&align.to_le_bytes());
        out.extend_from_slice(&entsize.to_le_bytes());
    };
    out.extend_from_slice(&[0u8; 64]);
    section(&mut out, [shname("xdp"), 1], 0x6, text_at, text.len());
    tail(&mut out, 0, 0, 8, 0);
    section(&mut out, [shname("license"), 1], 0x3, license_at, 4);
    tail(&mut out, 0, 0, 1, 0);
    section(&mut out, [shname(".symtab"), 2], 0, symtab_at, 48);
    tail(&mut out, 4, 1, 8, 24);
    section(&mut out, [shname(".strtab"), 3], 0, strtab_at, strtab.len());
    tail(&mut out, 0, 0, 1, 0);
    section(
        &mut out,
        [shname(".shstrtab"), 3],
        0,
        shstrtab_at,
        shstrtab.len(),
    );
    tail(&mut out, 0, 0, 1, 0);

    let header = &mut out[..64];
    header[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    header[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    header[18..20].copy_from_slice(&247u16.to_le_bytes()); // EM_BPF
    header[20..24].copy_from_slice(&1u32.to_le_bytes());
    header[40..48].copy_from_slice(&(sections_at as u64).to_le_bytes());
    header[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    header[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    header[60..62].copy_from_slice(&6u16.to_le_bytes()); // e_shnum
    header[62..64].copy_from_slice(&5u16.to_le_bytes()); // e_shstrndx
    out
}

/// Loads `code` as XDP program `name` the way the daemon does (its log level,
/// `load_checked`), with the log going to `dir`.
fn load(name: &str, code: &[[u8; 8]], dir: &Path) -> Result<(), DataPlaneError> {
    load_parsed(&mut parse(name, code), name, dir)
}

/// The object of `code`, parsed by aya (which probes the kernel's features the first
/// time), not loaded yet.
fn parse(name: &str, code: &[[u8; 8]]) -> Ebpf {
    EbpfLoader::new()
        .verifier_log_level(verifier::log_level())
        .load(&xdp_object(name, code))
        .expect("aya parses the test object")
}

fn load_parsed(ebpf: &mut Ebpf, name: &str, dir: &Path) -> Result<(), DataPlaneError> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .expect("the object has its program")
        .try_into()
        .expect("an XDP program");
    verifier::load_checked(program, name, Some(dir))
}

fn rejection(result: Result<(), DataPlaneError>) -> Box<Rejection> {
    match result {
        Err(DataPlaneError::Rejected(r)) => r,
        Err(other) => panic!("expected a rejection, got: {other}"),
        Ok(()) => panic!("the kernel accepted a program it must refuse"),
    }
}

#[test]
fn a_valid_program_loads() {
    if !require_root_and_bpf("a_valid_program_loads") {
        return;
    }
    let dir = TempDir::new("verifier-ok");
    let code = [insn(MOV64_IMM, 0, 0, 0, 2), insn(EXIT, 0, 0, 0, 0)];
    load("ok_xdp", &code, dir.path()).expect("XDP_PASS loads");
    assert!(!dir.path().join("verifier-ok_xdp.log").exists());
}

/// Reading a register nothing wrote: refused at once, EACCES, one instruction.
#[test]
fn an_invalid_program_is_reported_with_the_verifier_s_reason() {
    if !require_root_and_bpf("an_invalid_program_is_reported_with_the_verifier_s_reason") {
        return;
    }
    let dir = TempDir::new("verifier-bad");
    let code = [insn(MOV64_REG, 0, 5, 0, 0), insn(EXIT, 0, 0, 0, 0)];
    let r = rejection(load("bad_xdp", &code, dir.path()));
    let text = r.to_string();
    println!("{text}");
    assert_eq!(r.errno, Some(libc::EACCES), "{text}");
    assert_eq!(r.processed, Some(1), "{text}");
    assert!(r.last_lines.iter().any(|l| l == "R5 !read_ok"), "{text}");
    assert!(
        text.starts_with("the kernel rejected the XDP program bad_xdp: Permission denied"),
        "{text}"
    );
    let path = dir.path().join("verifier-bad_xdp.log");
    assert!(text.contains(&path.display().to_string()), "{text}");
    let log = fs::read_to_string(&path).expect("the log file");
    assert!(
        log.contains("R5 !read_ok") && log.contains("processed 1 insns"),
        "{log}"
    );
}

/// A loop of two million steps: the verifier gives up at its limit of a million
/// instructions. The error must be the kernel's E2BIG with the count, not the ENOSPC of
/// a log that outgrew its buffer, and it must not take a verification per log size.
#[test]
fn a_program_too_large_to_verify_fails_with_e2big_and_the_count() {
    if !require_root_and_bpf("a_program_too_large_to_verify_fails_with_e2big_and_the_count") {
        return;
    }
    let dir = TempDir::new("verifier-big");
    let code = [
        insn(MOV64_IMM, 1, 0, 0, 0),
        insn(ADD64_IMM, 1, 0, 0, 1),
        insn(JLT_IMM, 1, 0, -2, 2_000_000),
        insn(MOV64_IMM, 0, 0, 0, 2),
        insn(EXIT, 0, 0, 0, 0),
    ];
    let started = Instant::now();
    let r = rejection(load("big_xdp", &code, dir.path()));
    let took = started.elapsed();
    let text = r.to_string();
    println!("{text}\n(rejected in {took:?})");
    assert_eq!(r.errno, Some(libc::E2BIG), "{text}");
    assert_eq!((r.processed, r.limit), (Some(1_000_001), Some(1_000_000)));
    assert!(
        text.contains("| BPF program is too large. Processed 1000001 insn"),
        "{text}"
    );
    assert!(text.lines().count() <= 15, "{text}");
    // The short log (errors and statistics) fits aya's first buffer: a handful of lines.
    assert!(r.log_lines < 20, "{text}");
}

/// A signal reaching the loading thread makes the verifier give up with EAGAIN, which
/// says nothing about the program (a SIGHUP to the daemon, a SIGCHLD in a process that
/// handles it): the load is tried again and succeeds. Two signals 30 ms apart: aya's
/// own second verification (the one with a log, after any failure) absorbs the first, the
/// second fails that one too. The program is a loop of 150,000 steps, which takes some
/// 250 ms to verify, so both land during verification.
#[test]
fn a_signal_during_verification_does_not_fail_the_load() {
    if !require_root_and_bpf("a_signal_during_verification_does_not_fail_the_load") {
        return;
    }
    static DELIVERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn note_signal(_: libc::c_int) {
        DELIVERED.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic; SA_RESTART is left out, as in a
    // process whose signal handling does not ask for restarts.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = note_signal as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
    }
    let dir = TempDir::new("verifier-signal");
    let code = [
        insn(MOV64_IMM, 1, 0, 0, 0),
        insn(ADD64_IMM, 1, 0, 0, 1),
        insn(JLT_IMM, 1, 0, -2, 150_000),
        insn(MOV64_IMM, 0, 0, 0, 2),
        insn(EXIT, 0, 0, 0, 0),
    ];
    let mut ebpf = parse("slow_xdp", &code);
    // SAFETY: pthread_self has no preconditions.
    let loader = unsafe { libc::pthread_self() } as usize;
    let loading = Arc::new(AtomicBool::new(true));
    let signaller = {
        let loading = Arc::clone(&loading);
        thread::spawn(move || {
            let mut sent_while_loading = true;
            for _ in 0..2 {
                thread::sleep(Duration::from_millis(30));
                sent_while_loading &= loading.load(Ordering::SeqCst);
                // SAFETY: the loading thread is this test's, alive until it joins us.
                let rc = unsafe { libc::pthread_kill(loader as libc::pthread_t, libc::SIGUSR2) };
                assert_eq!(rc, 0, "pthread_kill");
            }
            sent_while_loading
        })
    };
    let started = Instant::now();
    let result = load_parsed(&mut ebpf, "slow_xdp", dir.path());
    let took = started.elapsed();
    loading.store(false, Ordering::SeqCst);
    let sent_while_loading = signaller.join().expect("the signalling thread");
    println!(
        "loaded in {took:?}; signals sent during the load: {sent_while_loading}, handled: {}",
        DELIVERED.load(Ordering::SeqCst)
    );
    if let Err(e) = &result {
        panic!("a signal failed the load: {e}");
    }
    assert!(
        sent_while_loading && DELIVERED.load(Ordering::SeqCst),
        "the signals must land during verification ({took:?}) for this test to mean anything"
    );
}

/// The daemon's real program, rejected: a hash map pinned where the daemon expects its
/// devmap (same key, value and size, so the layout check passes) cannot be passed to
/// bpf_redirect_map. The daemon exits non-zero once, with the short message on stderr,
/// and the full log in its state folder.
#[test]
fn the_daemon_exits_with_a_short_message_when_its_program_is_rejected() {
    if !require_root_and_bpf("the_daemon_exits_with_a_short_message_when_its_program_is_rejected") {
        return;
    }
    let prefix = unique_prefix("rej");
    let ns = Netns::create(&format!("{prefix}lb"));
    let instance = format!("{prefix}i");
    let maps = Path::new("/sys/fs/bpf").join(&instance).join("maps");
    fs::create_dir_all(&maps).expect("creating the pin folder");
    pin_hash_map(
        &maps.join(lb_common::names::TX_PORTS),
        4,
        8,
        lb_common::MAX_INTERFACES,
    );
    let config = format!("instance: {instance}\ninterfaces: [lo]\nflow_table_size: 1024\n");

    let started = Instant::now();
    let result = LbDaemon::try_start(&ns, &instance, &config);
    let took = started.elapsed();
    // try_start tore the pins down; make sure whatever happened.
    let _ = fs::remove_dir_all(maps.parent().expect("instance folder"));
    let error = match result {
        Ok(_) => panic!("the daemon started over a hash map where its devmap belongs"),
        Err(e) => e,
    };
    let text = error.to_string();
    println!("{text}\n(failed in {took:?})");

    assert!(
        error.status.is_some_and(|s| !s.success()),
        "exits non-zero: {text}"
    );
    assert!(
        text.contains("lb-ctl daemon: the kernel rejected the XDP program lb_xdp: "),
        "{text}"
    );
    assert!(text.contains("the verifier processed "), "{text}");
    assert!(
        text.contains("bpf_redirect_map"),
        "the verifier's reason: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    // The message and the few info lines before it; not the log.
    assert!(text.lines().count() <= 25, "{text}");
    let path = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("full verifier log ("))
        .and_then(|rest| rest.split_once("): "))
        .map(|(_, path)| path.to_owned())
        .unwrap_or_else(|| panic!("the message names the log file: {text}"));
    let log = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(log.contains("bpf_redirect_map"), "{log}");
    let _ = fs::remove_dir_all(Path::new(&path).parent().and_then(Path::parent).unwrap());
    assert!(
        took < Duration::from_secs(60),
        "a rejection fails fast: {took:?}"
    );
}

/// Creates a BPF hash map and pins it at `path` (raw bpf(2): aya creates maps only from
/// an object).
fn pin_hash_map(path: &Path, key_size: u32, value_size: u32, max_entries: u32) {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_HASH,
        key_size,
        value_size,
        max_entries,
    };
    // SAFETY: a valid prefix of `union bpf_attr` for BPF_MAP_CREATE, of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create as *const MapCreate,
            size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("pin path");
    let pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: as above for BPF_OBJ_PIN; the path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            size_of::<ObjPin>(),
        )
    };
    let pinned = std::io::Error::last_os_error();
    // SAFETY: our descriptor; the pin keeps the map.
    unsafe { libc::close(fd as libc::c_int) };
    assert!(rc == 0, "BPF_OBJ_PIN {}: {pinned}", path.display());
}
