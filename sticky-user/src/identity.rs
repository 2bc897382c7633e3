//! Which sticky binary runs: its version and GNU build id, for `sticky status` and for the
//! check an upgrade makes of the binary it is about to run.

use std::{path::Path, sync::OnceLock};

use object::{Object as _, read::File};

/// The package version of this binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// This binary's build id (hex), read once from `/proc/self/exe`; `unknown` without one.
pub fn build_id() -> &'static str {
    static BUILD_ID: OnceLock<String> = OnceLock::new();
    BUILD_ID.get_or_init(|| build_id_of(Path::new("/proc/self/exe")).unwrap_or("unknown".into()))
}

/// The GNU build id of the ELF file at `path`, if it has one.
fn build_id_of(path: &Path) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let id = File::parse(&*data).ok()?.build_id().ok()??;
    Some(id.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_test_binary_has_a_build_id() {
        let id = super::build_id();
        assert!(id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}
