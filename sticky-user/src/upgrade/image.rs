//! The binary an upgrade runs: opened once, checked on that open file, then probed and executed
//! by it, so what runs is what was checked even if the path changes meanwhile.
//!
//! The path is walked from `/` one directory at a time (`openat`, no symbolic links followed),
//! each checked on its own open fd. The file and its directory must be owned by root or by the
//! loader's own user and be writable by nobody else; every directory above must be owned by
//! root or that user too, and be writable by nobody else unless it has the sticky bit (as
//! `/tmp`: others then cannot rename or remove what root owns in it). The file must be a
//! regular ELF file: a script cannot be executed from a close-on-exec fd.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Component, Path, PathBuf},
};

use nix::{
    fcntl::{OFlag, open, openat},
    sys::{
        stat::{FileStat, Mode, SFlag, fstat},
        uio::pread,
    },
    unistd::geteuid,
};

use super::UpgradeError;
use crate::{
    dir_safety::{self, Owners, Unsafe, Writers},
    identity::RUNNING_IMAGE,
};

/// A binary opened for an upgrade and found safe to run.
#[derive(Debug)]
pub(crate) struct Image {
    path: PathBuf,
    file: OwnedFd,
}

impl Image {
    /// Opens the binary at `path` (absolute) once, refusing one that someone other than root
    /// or this loader's user could have written, naming the path and why.
    pub(crate) fn open(path: &Path) -> Result<Self, UpgradeError> {
        let refuse = |reason: String| UpgradeError::Unsafe { path: path.into(), reason };
        let (Some(directory), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(refuse("is not the path of a file".into()));
        };
        if !path.is_absolute() {
            return Err(refuse("is not an absolute path".into()));
        }
        let cannot_open = |at: &Path, err: nix::Error| {
            refuse(if at == path {
                format!("cannot be opened: {err}")
            } else {
                format!("cannot be reached: {} cannot be opened: {err}", at.display())
            })
        };
        let walk = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut at = PathBuf::from("/");
        let mut dir = open("/", walk, Mode::empty()).map_err(|err| cannot_open(&at, err))?;
        check_directory(&dir, &at, at == directory).map_err(&refuse)?;
        for component in directory.components().skip(1) {
            let Component::Normal(part) = component else {
                return Err(refuse("is not a plain absolute path".into()));
            };
            at.push(part);
            dir = openat(&dir, part, walk, Mode::empty()).map_err(|err| cannot_open(&at, err))?;
            check_directory(&dir, &at, at == directory).map_err(&refuse)?;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let file =
            openat(&dir, name, flags, Mode::empty()).map_err(|err| cannot_open(path, err))?;
        let stat = fstat(&file).map_err(|err| refuse(format!("cannot be examined: {err}")))?;
        if kind(&stat) != SFlag::S_IFREG {
            return Err(refuse("is not a regular file".into()));
        }
        trusted(&stat, Writers::OwnerOnly).map_err(|reason| refuse(reason.to_string()))?;
        if !is_elf(&file) {
            return Err(refuse("is not an ELF executable".into()));
        }
        Ok(Self { path: path.into(), file })
    }

    /// The path it was opened at (its argv[0] when it runs).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, which the probe and the exec run.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// A path naming the open file itself (`/proc/self/fd/N`), for a child that inherits it.
    pub(crate) fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Opens the running image, to keep for a hand-back.
pub(crate) fn open_running() -> nix::Result<OwnedFd> {
    open(RUNNING_IMAGE, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
}

/// Checks directory `at` on its open fd: `innermost` is the binary's own directory, which must
/// not be writable by others even with the sticky bit.
fn check_directory(dir: &OwnedFd, at: &Path, innermost: bool) -> Result<(), String> {
    let stat = fstat(dir).map_err(|err| format!("cannot be reached: {}: {err}", at.display()))?;
    let writers = if innermost { Writers::OwnerOnly } else { Writers::OwnerOrSticky };
    trusted(&stat, writers).map_err(|reason| {
        let relation = if innermost { "is in" } else { "is under" };
        format!("{relation} {}, which {reason}", at.display())
    })
}

/// Whether `stat` is owned by root or this process's effective user and writable by no one
/// else (or, per `writers`, by others in a sticky directory).
fn trusted(stat: &FileStat, writers: Writers) -> Result<(), Unsafe> {
    dir_safety::check(stat.into(), geteuid().as_raw(), Owners::RootOrUs, writers)
}

/// The file type bits of `stat`.
fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// Whether the open file starts as an ELF file does.
fn is_elf(file: &OwnedFd) -> bool {
    let mut magic = [0u8; 4];
    pread(file, &mut magic, 0).is_ok_and(|read| read == 4) && magic == *b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{PermissionsExt as _, chown},
        path::{Path, PathBuf},
    };

    use super::Image;

    /// A fresh directory (0755) under the temporary directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("sticky-image-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir).unwrap();
            chmod(&dir, 0o755);
            Self(dir)
        }

        /// A file holding `content` with `mode`.
        fn file(&self, content: &[u8], mode: u32) -> PathBuf {
            let path = self.0.join("sticky");
            fs::write(&path, content).unwrap();
            chmod(&path, mode);
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refusal(path: &Path) -> String {
        Image::open(path).expect_err("refused").to_string()
    }

    const ELF: &[u8] = b"\x7fELF\x02\x01\x01";

    #[test]
    fn a_file_only_its_owner_may_write_is_opened() {
        let dir = Dir::new("ok");
        let path = dir.file(ELF, 0o755);
        let image = Image::open(&path).unwrap();
        assert_eq!(image.path(), path);
        assert_eq!(fs::read_link(image.fd_path()).unwrap(), path);
    }

    #[test]
    fn a_file_its_group_or_others_may_write_is_refused() {
        let dir = Dir::new("writable");
        let path = dir.file(ELF, 0o775);
        let expected = format!("upgrade refused: {} is writable by its group", path.display());
        assert_eq!(refusal(&path), expected);
        chmod(&path, 0o757);
        assert!(refusal(&path).ends_with("is writable by others"));
    }

    #[test]
    fn a_file_in_a_directory_others_may_write_is_refused_even_with_the_sticky_bit() {
        let dir = Dir::new("directory");
        let path = dir.file(ELF, 0o755);
        chmod(&dir.0, 0o1757);
        let expected = format!(
            "upgrade refused: {} is in {}, which is writable by others",
            path.display(),
            dir.0.display()
        );
        assert_eq!(refusal(&path), expected);
        chmod(&dir.0, 0o775);
        assert!(refusal(&path).ends_with("which is writable by its group"));
    }

    #[test]
    fn a_directory_above_others_may_write_is_refused_unless_sticky() {
        let dir = Dir::new("above");
        let inner = dir.0.join("bin");
        fs::create_dir(&inner).unwrap();
        chmod(&inner, 0o755);
        let path = inner.join("sticky");
        fs::write(&path, ELF).unwrap();
        chmod(&path, 0o755);
        chmod(&dir.0, 0o757);
        let expected = format!("is under {}, which is writable by others", dir.0.display());
        assert!(refusal(&path).ends_with(&expected), "{}", refusal(&path));
        // As /tmp: others may not rename what is not theirs there.
        chmod(&dir.0, 0o1777);
        Image::open(&path).unwrap();
    }

    #[test]
    fn a_script_a_link_or_a_relative_path_is_refused() {
        let dir = Dir::new("kinds");
        let path = dir.file(b"#!/bin/sh\n", 0o755);
        assert!(refusal(&path).ends_with("is not an ELF executable"));
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(refusal(&link).contains("cannot be opened"), "{}", refusal(&link));
        assert!(refusal(Path::new("bin/sticky")).ends_with("is not an absolute path"));
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: only root can give a file away");
            return;
        }
        let dir = Dir::new("owner");
        let path = dir.file(ELF, 0o755);
        chown(&path, Some(65534), None).unwrap();
        assert!(refusal(&path).ends_with("is owned by uid 65534, not root"), "{}", refusal(&path));
    }
}
