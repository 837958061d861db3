//! Verifier headroom. Every production program must verify in at most `VERIFIER_BUDGET`
//! processed instructions, a tenth of the kernel's limit, in the release build and in the
//! per-packet-logging build: a program near the limit passes on one machine and is
//! rejected on the next (another kernel build or toolchain point release is enough). The
//! figures are printed on every run, so a CI log shows how much room is left.

use std::{env, fs};

use lb_ctl::dataplane::{
    DataPlane, LoadOptions, ProgramFigures, VERIFIER_BUDGET, production_programs,
};
use lb_tests::privilege::{in_ci, require_root_and_bpf};

/// Set by `cargo xtask test` to the XDP object built with `--features debug-log`.
const DEBUG_LOG_OBJECT_VAR: &str = "LB_EBPF_DEBUG_LOG_OBJECT";

/// Prints one line per program and returns what is over budget or missing.
fn check(build: &str, figures: &[ProgramFigures]) -> Vec<String> {
    let mut problems = Vec::new();
    for f in figures {
        println!(
            "verifier: {build:<9} {:<15} {:>7} processed insns ({:>4.1}% of the {VERIFIER_BUDGET} \
             budget), {:>6} B jited, loaded in {:.1} ms",
            f.name,
            f.verified_insns,
            100.0 * f64::from(f.verified_insns) / f64::from(VERIFIER_BUDGET),
            f.jited_bytes,
            f.load_time.as_secs_f64() * 1e3,
        );
        if f.verified_insns == 0 {
            problems.push(format!(
                "{build} {}: the kernel reported no processed-instruction count",
                f.name
            ));
        }
        if f.verified_insns > VERIFIER_BUDGET {
            problems.push(format!(
                "{build} {}: {} processed instructions, over the budget of {VERIFIER_BUDGET}",
                f.name, f.verified_insns
            ));
        }
    }
    problems
}

/// `check`, and every production program of the load balancer's object must be there.
fn check_all(build: &str, figures: &[ProgramFigures]) -> Vec<String> {
    let mut problems = check(build, figures);
    for name in production_programs() {
        if !figures.iter().any(|f| f.name == name) {
            problems.push(format!("{build}: program {name} was not loaded"));
        }
    }
    problems
}

/// The backends' decapsulation program, an object of its own (`lb-ctl decap`).
fn check_decap() -> Vec<String> {
    use lb_common::decap::names;
    let mut ebpf = aya::EbpfLoader::new()
        .load(lb_ctl::decap::DECAP_OBJECT)
        .expect("the decapsulation object parses");
    let program: &mut aya::programs::Xdp = ebpf
        .program_mut(names::PROGRAM)
        .expect("the object has its program")
        .try_into()
        .expect("an XDP program");
    let started = std::time::Instant::now();
    lb_ctl::verifier::load_checked(program, names::PROGRAM, None).unwrap_or_else(|e| panic!("{e}"));
    let load_time = started.elapsed();
    let info = program.info().expect("program info");
    let figures = ProgramFigures {
        name: names::PROGRAM,
        verified_insns: info.verified_instruction_count().unwrap_or(0),
        jited_bytes: info.size_jitted(),
        load_time,
    };
    check("release", &[figures])
}

#[test]
fn every_program_verifies_within_budget() {
    if !require_root_and_bpf("every_program_verifies_within_budget") {
        return;
    }
    let release = DataPlane::load(&LoadOptions::default()).expect("the XDP programs load");
    let mut problems = check_all("release", release.program_figures());
    drop(release);
    problems.extend(check_decap());

    match env::var_os(DEBUG_LOG_OBJECT_VAR) {
        Some(path) => {
            let object = fs::read(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.to_string_lossy()));
            let debug = DataPlane::load_object(&object, &LoadOptions::default())
                .expect("the per-packet-logging build of the XDP programs loads");
            problems.extend(check_all("debug-log", debug.program_figures()));
        }
        None if in_ci() => panic!(
            "{DEBUG_LOG_OBJECT_VAR} is not set: `cargo xtask test` builds the per-packet-logging \
             object and sets it, and in CI its budget must be checked"
        ),
        None => println!(
            "SKIP: the per-packet-logging build ({DEBUG_LOG_OBJECT_VAR} is not set; `cargo xtask \
             test` sets it)"
        ),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// BPF's other limit: 512 bytes of stack along any chain of calls (a program, and a
/// `bpf_loop` callback or subprogram it calls). A program near it is rejected when a
/// toolchain lays its stack out less tightly, as one near the instruction limit is.
const STACK_LIMIT: u32 = 512;
/// What the programs may use of it.
const STACK_BUDGET: u32 = 448;

/// Bytes of stack a function's instructions reach below the frame pointer (r10): its
/// loads and stores there, and stack buffers whose address it takes (`rX = r10; rX += -N`).
fn frame(insns: &[aya_obj::generated::bpf_insn]) -> u32 {
    const LDX: u8 = 0x01;
    const ST: u8 = 0x02;
    const STX: u8 = 0x03;
    const ADD64_IMM: u8 = 0x07;
    const MOV64_REG: u8 = 0xbf;
    const FP: u8 = 10;
    let mut deepest = 0i32;
    for (i, insn) in insns.iter().enumerate() {
        let class = insn.code & 0x07;
        let on_stack = match class {
            LDX => insn.src_reg() == FP,
            ST | STX => insn.dst_reg() == FP,
            _ => false,
        };
        if on_stack {
            deepest = deepest.max(-i32::from(insn.off));
        }
        if insn.code == ADD64_IMM
            && insn.imm < 0
            && let Some(prev) = i.checked_sub(1).map(|p| &insns[p])
            && prev.code == MOV64_REG
            && prev.src_reg() == FP
            && prev.dst_reg() == insn.dst_reg()
        {
            deepest = deepest.max(-insn.imm);
        }
    }
    (deepest.max(0) as u32).next_multiple_of(8)
}

/// The kernel rounds each frame of a call chain up before adding them: to 16 bytes when
/// the program is JIT-compiled (always, on machines of this kind: `BPF_JIT_ALWAYS_ON`),
/// to 32 with at least 1 for the interpreter. The budget holds the first; the second
/// must still fit the kernel's limit.
const JIT_ROUNDING: u32 = 16;
const INTERPRETER_ROUNDING: u32 = 32;

/// Where each function of a linked program starts: the program, and every target of a
/// BPF-to-BPF call or of a callback reference (`bpf_loop`'s), with the edges between them.
fn call_graph(insns: &[aya_obj::generated::bpf_insn]) -> (Vec<usize>, Vec<(usize, usize)>) {
    const CALL: u8 = 0x85;
    const LD_IMM64: u8 = 0x18;
    const PSEUDO_CALL: u8 = 1;
    const PSEUDO_FUNC: u8 = 4;
    let mut calls = Vec::new();
    for (i, insn) in insns.iter().enumerate() {
        let is_call = insn.code == CALL && insn.src_reg() == PSEUDO_CALL;
        let is_callback = insn.code == LD_IMM64 && insn.src_reg() == PSEUDO_FUNC;
        if is_call || is_callback {
            let target = i as i64 + 1 + i64::from(insn.imm);
            calls.push((
                i,
                usize::try_from(target).expect("a call inside the program"),
            ));
        }
    }
    let mut starts: Vec<usize> = std::iter::once(0)
        .chain(calls.iter().map(|c| c.1))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let function_of = |at: usize| starts.partition_point(|&s| s <= at) - 1;
    let edges = calls
        .iter()
        .map(|&(from, to)| (function_of(from), function_of(to)))
        .collect();
    (starts, edges)
}

/// The deepest chain of frames from function `f`, the kernel's way: each frame rounded up.
fn chain_depth(f: usize, frames: &[u32], edges: &[(usize, usize)], rounding: Rounding) -> u32 {
    fn walk(
        f: usize,
        frames: &[u32],
        edges: &[(usize, usize)],
        r: Rounding,
        seen: &mut Vec<usize>,
    ) -> u32 {
        if seen.contains(&f) {
            return 0; // the verifier refuses recursion anyway
        }
        seen.push(f);
        let deepest_callee = edges
            .iter()
            .filter(|e| e.0 == f)
            .map(|e| walk(e.1, frames, edges, r, seen))
            .max()
            .unwrap_or(0);
        seen.pop();
        let own = match r {
            Rounding::Jit => frames[f].next_multiple_of(JIT_ROUNDING),
            Rounding::Interpreter => frames[f].max(1).next_multiple_of(INTERPRETER_ROUNDING),
        };
        own + deepest_callee
    }
    walk(f, frames, edges, rounding, &mut Vec::new())
}

#[derive(Clone, Copy)]
enum Rounding {
    Jit,
    Interpreter,
}

/// Each program's stack along its deepest chain of calls (itself, the functions and
/// `bpf_loop` callbacks it reaches), linked as the loader links it, against `STACK_BUDGET`.
fn check_stack(build: &str, object: &[u8]) -> Vec<String> {
    let mut obj = aya_obj::Object::parse(object).expect("the object parses");
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_calls(&text_sections)
        .expect("the object's calls link");
    let mut problems = Vec::new();
    let mut names: Vec<_> = obj.programs.keys().cloned().collect();
    names.sort();
    for name in names {
        let key = obj.programs[&name].function_key();
        let insns = &obj.functions[&key].instructions;
        let (starts, edges) = call_graph(insns);
        let frames: Vec<u32> = starts
            .iter()
            .enumerate()
            .map(|(i, &s)| frame(&insns[s..starts.get(i + 1).copied().unwrap_or(insns.len())]))
            .collect();
        let total = chain_depth(0, &frames, &edges, Rounding::Jit);
        let interpreted = chain_depth(0, &frames, &edges, Rounding::Interpreter);
        let own = frames[0];
        println!(
            "stack: {build:<9} {name:<15} {own:>3} B of its own, {total:>3} B along its deepest \
             chain of calls ({} functions; {interpreted} B for the interpreter), of \
             {STACK_LIMIT} (budget {STACK_BUDGET})",
            starts.len()
        );
        if total > STACK_BUDGET {
            problems.push(format!(
                "{build} {name}: {total} B of stack along its deepest chain of calls, over the \
                 budget of {STACK_BUDGET} (the kernel's limit is {STACK_LIMIT})"
            ));
        }
        if interpreted > STACK_LIMIT {
            problems.push(format!(
                "{build} {name}: {interpreted} B of stack for the interpreter, over the kernel's \
                 limit of {STACK_LIMIT}"
            ));
        }
    }
    problems
}

/// Needs no privilege: the object is read, not loaded.
#[test]
fn every_program_stays_within_the_stack_budget() {
    let mut problems = check_stack("release", lb_ctl::dataplane::EBPF_OBJECT);
    problems.extend(check_stack("decap", lb_ctl::decap::DECAP_OBJECT));
    match env::var_os(DEBUG_LOG_OBJECT_VAR) {
        Some(path) => {
            let object = fs::read(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.to_string_lossy()));
            problems.extend(check_stack("debug-log", &object));
        }
        None if in_ci() => panic!("{DEBUG_LOG_OBJECT_VAR} is not set; `cargo xtask test` sets it"),
        None => println!("SKIP: the per-packet-logging build ({DEBUG_LOG_OBJECT_VAR} is not set)"),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The compiler's block clears and copies that the BPF target leaves to functions:
/// `compiler_builtins` implements them one byte per loop iteration, so a 52-byte clear
/// runs some 260 instructions (`lb-ebpf/src/words.rs`).
const BYTE_LOOPS: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];

/// The code's relocations in `object`, and every call among them of a `BYTE_LOOPS`
/// function: section, offset, callee.
fn byte_loop_calls(object: &[u8]) -> (usize, Vec<String>) {
    use object::{
        Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind,
    };
    let file = object::File::parse(object).expect("the object parses");
    let (mut relocations, mut calls) = (0, Vec::new());
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        for (offset, relocation) in section.relocations() {
            relocations += 1;
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let name = file
                .symbol_by_index(index)
                .and_then(|s| s.name())
                .unwrap_or_default();
            if BYTE_LOOPS.contains(&name) {
                calls.push(format!(
                    "{} + {offset:#x} calls {name}",
                    section.name().unwrap_or("?")
                ));
            }
        }
    }
    (relocations, calls)
}

/// Needs no privilege: the objects are read, not loaded. The production programs, the
/// backends' decapsulation program and the bench's programs clear and copy with word
/// stores, never through a byte loop.
#[test]
fn no_program_clears_or_copies_a_byte_at_a_time() {
    let mut problems = Vec::new();
    for (build, object) in [
        ("release", lb_ctl::dataplane::EBPF_OBJECT),
        ("decap", lb_ctl::decap::DECAP_OBJECT),
        ("testing", lb_tests::TEST_OBJECT),
    ] {
        let (relocations, calls) = byte_loop_calls(object);
        println!(
            "byte loops: {build:<9} {} calls of {} among the code's {relocations} relocations",
            calls.len(),
            BYTE_LOOPS.join("/")
        );
        problems.extend(calls.into_iter().map(|c| format!("{build}: {c}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
