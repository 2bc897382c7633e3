//! Builds the eBPF program (`sticky-ebpf`) for the BPF target and leaves the object in OUT_DIR,
//! where `dispatch.rs` embeds it.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    if which::which("bpf-linker").is_err() {
        // One line, no backtrace: this is the usual first-build problem.
        eprintln!(
            "error: bpf-linker is not installed; `cargo xtask bootstrap` installs it \
             (see README.md, \"Requirements\")"
        );
        std::process::exit(1);
    }
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
