//! A copy of the sticky binary in a directory of its own, which an upgrade test may replace.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use crate::sticky_bin;

/// A directory the workers' user can read, holding a copy of the sticky binary that the test
/// may replace; removed on drop.
pub struct BinaryDir(PathBuf);

impl BinaryDir {
    /// A new directory `name` with a copy of the sticky under test.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sticky-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let this = Self(dir);
        this.install(&sticky_bin());
        this
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// The binary's path.
    pub fn sticky(&self) -> PathBuf {
        self.0.join("sticky")
    }

    /// Puts a copy of `source` at the binary's path, as a package upgrade does (a new file
    /// renamed over the old one, which keeps running).
    pub fn install(&self, source: &Path) {
        let next = self.0.join("sticky.new");
        fs::copy(source, &next).unwrap();
        fs::set_permissions(&next, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&next, self.sticky()).unwrap();
    }

    /// Puts a shell script at the binary's path.
    pub fn install_script(&self, script: &str) {
        let source = self.0.join("script");
        fs::write(&source, script).unwrap();
        self.install(&source);
    }

    /// Sets the mode of `path`, inside this directory.
    pub fn chmod(&self, path: &Path, mode: u32) {
        assert!(path.starts_with(&self.0));
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

impl Drop for BinaryDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
