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

/// Each program's stack, with the deepest function it may call (every function outside
/// the programs: callbacks and the compiler's helpers), against `STACK_BUDGET`.
fn check_stack(build: &str, object: &[u8]) -> Vec<String> {
    let obj = aya_obj::Object::parse(object).expect("the object parses");
    let program_keys: Vec<_> = obj.programs.values().map(|p| p.function_key()).collect();
    let callee = obj
        .functions
        .iter()
        .filter(|(key, _)| !program_keys.contains(key))
        .map(|(_, f)| frame(&f.instructions))
        .max()
        .unwrap_or(0);
    let mut problems = Vec::new();
    let mut names: Vec<_> = obj.programs.keys().collect();
    names.sort();
    for name in names {
        let key = obj.programs[name].function_key();
        let own = frame(&obj.functions[&key].instructions);
        let total = own + callee;
        println!(
            "stack: {build:<9} {name:<15} {own:>3} B + {callee} B in a callee = {total:>3} B of \
             {STACK_LIMIT} (budget {STACK_BUDGET})"
        );
        if total > STACK_BUDGET {
            problems.push(format!(
                "{build} {name}: {total} B of stack with its deepest callee, over the budget of \
                 {STACK_BUDGET} (the kernel's limit is {STACK_LIMIT})"
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
