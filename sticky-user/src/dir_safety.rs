//! The directory-safety rule: a path sticky trusts (a directory it creates things in, the
//! binary an upgrade runs and the directories above it) must be owned by root or by sticky's
//! own user, and be writable by nobody else, who could otherwise replace what is in it.
//!
//! Each caller gets the owner and mode its own way (following links or not, on a path or on
//! an open fd) and words the refusal its own way; [`check`] is the rule they share.

use std::{fs::Metadata, os::unix::fs::MetadataExt as _};

use nix::sys::stat::FileStat;
use thiserror::Error;

/// The owner and mode of a path, as `stat(2)` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// The owner's uid.
    pub(crate) uid: u32,
    /// The mode, with the file type bits.
    pub(crate) mode: u32,
}

impl From<&Metadata> for Stat {
    fn from(metadata: &Metadata) -> Self {
        Self { uid: metadata.uid(), mode: metadata.mode() }
    }
}

impl From<&FileStat> for Stat {
    fn from(stat: &FileStat) -> Self {
        Self { uid: stat.st_uid, mode: stat.st_mode }
    }
}

/// Who may own the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owners {
    /// Root or sticky's own (effective) user.
    RootOrUs,
    /// Sticky's own user only (root only when sticky runs as root).
    Us,
}

/// Who besides the owner may write to the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Writers {
    /// Nobody.
    OwnerOnly,
    /// Its group and others too if it has the sticky bit (as `/tmp`: they then cannot rename
    /// or remove what they do not own in it).
    OwnerOrSticky,
}

/// Why a path is not safe; the message completes "PATH …".
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub(crate) enum Unsafe {
    /// Someone else owns it.
    #[error("is owned by uid {owner}, not {}", allowed(*.owners, *.us))]
    Owner {
        /// Its owner.
        owner: u32,
        /// Sticky's effective uid.
        us: u32,
        /// Who may own it.
        owners: Owners,
    },
    /// Its group may write to it.
    #[error("is writable by its group")]
    GroupWritable {
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// Others may write to it.
    #[error("is writable by others")]
    OthersWritable {
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
}

/// Checks `stat` against the rule for a process whose effective uid is `us`: owned by one of
/// `owners`, and writable by no one but the owner (or by `writers`). The owner is checked
/// first, then the group's write bit, then others'.
pub(crate) fn check(stat: Stat, us: u32, owners: Owners, writers: Writers) -> Result<(), Unsafe> {
    let owner_ok = match owners {
        Owners::RootOrUs => stat.uid == 0 || stat.uid == us,
        Owners::Us => stat.uid == us,
    };
    if !owner_ok {
        return Err(Unsafe::Owner { owner: stat.uid, us, owners });
    }
    if writers == Writers::OwnerOrSticky && stat.mode & libc::S_ISVTX != 0 {
        return Ok(());
    }
    let mode = stat.mode & 0o7777;
    if mode & libc::S_IWGRP != 0 {
        return Err(Unsafe::GroupWritable { mode });
    }
    if mode & libc::S_IWOTH != 0 {
        return Err(Unsafe::OthersWritable { mode });
    }
    Ok(())
}

/// Who may own a path, in words.
fn allowed(owners: Owners, us: u32) -> String {
    match owners {
        Owners::RootOrUs if us == 0 => "root".into(),
        Owners::RootOrUs => format!("root or uid {us}"),
        Owners::Us => format!("uid {us}"),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::PermissionsExt as _,
        path::{Path, PathBuf},
    };

    use nix::unistd::geteuid;

    use super::*;

    /// A fresh directory under the temporary directory with `mode`, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str, mode: u32) -> Self {
            let path = std::env::temp_dir()
                .join(format!("sticky-dir-safety-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            Self(path)
        }

        fn stat(&self) -> Stat {
            stat_of(&self.0)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn stat_of(path: &Path) -> Stat {
        Stat::from(&fs::symlink_metadata(path).unwrap())
    }

    fn us() -> u32 {
        geteuid().as_raw()
    }

    use Owners::*;
    use Writers::*;

    #[test]
    fn a_directory_only_its_owner_may_write_is_safe() {
        for mode in [0o700, 0o711, 0o755] {
            let dir = Scratch::new(&format!("{mode:o}"), mode);
            assert_eq!(check(dir.stat(), us(), RootOrUs, OwnerOnly), Ok(()));
            assert_eq!(check(dir.stat(), us(), Us, OwnerOnly), Ok(()));
            assert_eq!(check(dir.stat(), us(), RootOrUs, OwnerOrSticky), Ok(()));
        }
    }

    #[test]
    fn group_write_is_found_before_others_write() {
        let dir = Scratch::new("group", 0o775);
        let found = check(dir.stat(), us(), RootOrUs, OwnerOnly);
        assert_eq!(found, Err(Unsafe::GroupWritable { mode: 0o775 }));
        assert_eq!(found.unwrap_err().to_string(), "is writable by its group");
        let dir = Scratch::new("both", 0o777);
        assert_eq!(
            check(dir.stat(), us(), Us, OwnerOnly),
            Err(Unsafe::GroupWritable { mode: 0o777 })
        );
        let dir = Scratch::new("others", 0o757);
        let found = check(dir.stat(), us(), RootOrUs, OwnerOnly);
        assert_eq!(found, Err(Unsafe::OthersWritable { mode: 0o757 }));
        assert_eq!(found.unwrap_err().to_string(), "is writable by others");
    }

    #[test]
    fn the_sticky_bit_lets_others_write_only_where_allowed() {
        let dir = Scratch::new("sticky", 0o1777);
        assert_eq!(check(dir.stat(), us(), RootOrUs, OwnerOrSticky), Ok(()));
        let found = check(dir.stat(), us(), RootOrUs, OwnerOnly);
        assert_eq!(found, Err(Unsafe::GroupWritable { mode: 0o1777 }));
        // Without the sticky bit, OwnerOrSticky is OwnerOnly.
        let dir = Scratch::new("plain", 0o757);
        let found = check(dir.stat(), us(), RootOrUs, OwnerOrSticky);
        assert_eq!(found, Err(Unsafe::OthersWritable { mode: 0o757 }));
    }

    #[test]
    fn another_owner_is_refused_before_the_mode_is_looked_at() {
        let dir = Scratch::new("owner", 0o777);
        let owner = dir.stat().uid;
        let other = owner + 1;
        if owner == 0 {
            // Root may own it for RootOrUs whoever we are, not for Us.
            assert!(
                check(dir.stat(), other, RootOrUs, OwnerOnly)
                    .is_err_and(|e| matches!(e, Unsafe::GroupWritable { .. }))
            );
        } else {
            let found = check(dir.stat(), other, RootOrUs, OwnerOnly).unwrap_err();
            assert_eq!(found, Unsafe::Owner { owner, us: other, owners: RootOrUs });
            assert_eq!(
                found.to_string(),
                format!("is owned by uid {owner}, not root or uid {other}")
            );
        }
        let found = check(dir.stat(), other, Us, OwnerOrSticky).unwrap_err();
        assert_eq!(found, Unsafe::Owner { owner, us: other, owners: Us });
        assert_eq!(found.to_string(), format!("is owned by uid {owner}, not uid {other}"));
    }

    #[test]
    fn a_file_owned_by_someone_else_than_root_is_refused_to_root() {
        let stat = Stat { uid: 65534, mode: libc::S_IFREG | 0o755 };
        let found = check(stat, 0, RootOrUs, OwnerOnly).unwrap_err();
        assert_eq!(found.to_string(), "is owned by uid 65534, not root");
        let ours = Stat { uid: 0, ..stat };
        assert_eq!(check(ours, 1000, RootOrUs, OwnerOnly), Ok(()));
        assert!(check(ours, 1000, Us, OwnerOnly).is_err());
    }
}
