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
