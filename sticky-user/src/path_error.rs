//! The error of a file-system operation on a named path, shared by the modules that touch files.

use std::{
    io,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// An operation on `path` failed.
#[derive(Debug, Error)]
#[error("cannot {action} {}", path.display())]
pub struct PathError {
    /// What was being done ("read", "write", "create", …).
    pub action: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

impl PathError {
    /// A `map_err` adapter: `fs::write(p, x).map_err(PathError::at("write", p))`.
    pub fn at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self { action, path, source }
    }
}
