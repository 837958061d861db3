//! Rebuilds the XDP object when bpf-linker changes (it does the final code generation and
//! is not a cargo dependency).
//!
//! The object is generated for the default BPF CPU. Do not add `--cpu-features=+alu32`
//! on its own: seen here with LLVM 22, a `u32` compared with `u32::MAX` after a spill
//! was tested as a sign-extended 64-bit -1 and never matched (wlc picked no backend).

fn main() {
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
