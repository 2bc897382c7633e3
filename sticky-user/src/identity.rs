//! Which sticky binary runs: its version and GNU build id, for `sticky status` and for the
//! check an upgrade makes of the binary it is about to run.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path, sync::OnceLock};

use object::{Object as _, read::File};

/// The package version of this binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The running image: the file this process executes, even once its path is replaced or
/// removed. Workers and the way back of an upgrade run it, not the path.
pub const RUNNING_IMAGE: &str = "/proc/self/exe";

/// This binary's build id (hex), read once from [`RUNNING_IMAGE`]; `unknown` without one.
pub fn build_id() -> &'static str {
    static BUILD_ID: OnceLock<String> = OnceLock::new();
    BUILD_ID.get_or_init(|| build_id_of(Path::new(RUNNING_IMAGE)).unwrap_or("unknown".into()))
}

/// Names this process (its comm, which `ps` and `pgrep` show) after argv[0]'s file name, as
/// a start by path does: run through [`RUNNING_IMAGE`] or by an fd, the kernel may name it
/// `exe` or by the fd's number.
pub fn name_after_argv0() {
    let Some(arg0) = std::env::args_os().next() else { return };
    let Some(name) = Path::new(&arg0).file_name() else { return };
    if let Ok(name) = CString::new(name.as_bytes()) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// The GNU build id of the ELF file at `path`, if it has one.
fn build_id_of(path: &Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let id = File::parse(&*data).ok()?.build_id().ok()??;
    Some(hex(id))
}

/// `octets` in lower-case hex, two digits each.
pub(crate) fn hex(octets: &[u8]) -> String {
    octets.iter().map(|octet| format!("{octet:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_test_binary_has_a_build_id() {
        let id = super::build_id();
        assert!(id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}
