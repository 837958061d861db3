//! Link-time settings of the XDP object (bpf-linker does the final code generation).

fn main() {
    // 32-bit sub-registers (alu32, kernel ≥ 5.1). With them LLVM knows a 32-bit load
    // already zero-extends, so a packet pointer read from `xdp_md` is never shifted (the
    // verifier refuses shifts on pointers). Host builds of the workspace skip it.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--cpu-features=+alu32");
    }
    // bpf-linker is an undeclared build dependency: rebuild when it changes.
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let linker = dir.join("bpf-linker");
            if linker.exists() {
                println!("cargo:rerun-if-changed={}", linker.display());
                break;
            }
        }
    }
}
