//! The hash seed, generated once and kept in the state directory, so a restarted `sticky` maps
//! every client to the same worker as before.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::path_error::PathError;

const SEED_FILE: &str = "seed";

/// Why the seed could not be read or created.
#[derive(Debug, Error)]
pub enum SeedError {
    /// The state directory or seed file could not be read or written.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The seed file holds something else than a seed.
    #[error("{} does not hold a seed (16 hex digits); remove it to make a new one", path.display())]
    Corrupt {
        /// The seed file.
        path: PathBuf,
    },
}

/// Reads the seed from `state_dir`, creating the directory and a random seed on first use.
pub fn load_or_create(state_dir: &Path) -> Result<u64, SeedError> {
    let path = state_dir.join(SEED_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|_| SeedError::Corrupt { path }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => create(state_dir, &path),
        Err(source) => Err(PathError::at("read", &path)(source).into()),
    }
}

/// Writes a new random seed to a temporary file (mode 0600, created new, never through a
/// symlink), syncs it, renames it into place and syncs the directory, so a crash never leaves a
/// half-written or lost seed.
fn create(state_dir: &Path, path: &Path) -> Result<u64, SeedError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(PathError::at("create", state_dir))?;
    let seed: u64 = rand::random();
    let temporary = state_dir.join(format!(".{SEED_FILE}.{}", std::process::id()));
    // A temporary file an earlier crash left behind.
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(PathError::at("write", &temporary))?;
    writeln!(file, "{seed:016x}")
        .and_then(|()| file.sync_all())
        .map_err(PathError::at("write", &temporary))?;
    fs::rename(&temporary, path).map_err(PathError::at("write", path))?;
    fs::File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(PathError::at("sync", state_dir))?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_seed_persists() {
        let dir = std::env::temp_dir().join(format!("sticky-seed-test-{}", std::process::id()));
        let state = dir.join("state");
        let first = load_or_create(&state).unwrap();
        assert_eq!(load_or_create(&state).unwrap(), first);
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&state.join(SEED_FILE)), mode(&state)), (0o600, 0o700));
        fs::write(state.join(SEED_FILE), "garbage").unwrap();
        assert!(matches!(load_or_create(&state), Err(SeedError::Corrupt { .. })));
        fs::remove_dir_all(dir).unwrap();
    }
}
