//! Rebuild the kernel program when the bpf-linker that links it changes.
fn main() {
    // A missing bpf-linker is reported by the link step itself, with the fix.
    if let Ok(bpf_linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
