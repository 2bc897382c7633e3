//! Builds the eBPF program (`sticky-ebpf`) for the BPF target and leaves the object in OUT_DIR,
//! where `kernel/dispatcher.rs` embeds it. Runs again when the eBPF crate (aya-build watches
//! its directory), the contract crate or the bpf-linker binary changes.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let Ok(linker) = which::which("bpf-linker") else {
        // One line, no backtrace: this is the usual first-build problem.
        eprintln!(
            "error: bpf-linker is not installed; `cargo xtask bootstrap` installs it \
             (see README.md, \"Requirements\")"
        );
        std::process::exit(1);
    };
    // A new bpf-linker (or LLVM under it) links the program anew.
    println!("cargo:rerun-if-changed={}", linker.display());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).parent().context("workspace root")?;
    let ebpf_dir = root.join("sticky-ebpf");
    // The contract crate is compiled into the program too.
    println!("cargo:rerun-if-changed={}", root.join("sticky-common").display());
    let ebpf = Package {
        name: "sticky-ebpf",
        root_dir: ebpf_dir.to_str().context("non-UTF-8 workspace path")?,
        ..Default::default()
    };
    // aya-build relays the nested cargo's stderr as warnings: keep only its errors.
    // SAFETY: the build script is single-threaded.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf([ebpf], Toolchain::default())
}
