//! What validation asks of the machine: users, groups, programs, directories, privilege, CPUs.
//!
//! Behind a trait, so the rules (`resolve.rs`) are pure and their tests need no user
//! database or file system.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

use super::error::CommandProblem;

/// A user as validation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// The user's name.
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
}

/// The machine the configuration is validated for.
pub trait Host {
    /// The user with this name, or this uid if it is a number.
    fn user(&self, name_or_uid: &str) -> Option<UserEntry>;
    /// The gid of the group with this name, or this gid if it is a number.
    fn group(&self, name_or_gid: &str) -> Option<u32>;
    /// The absolute path of the executable `program` names (a path, or a name looked up in
    /// PATH).
    fn program(&self, program: &Path) -> Result<PathBuf, CommandProblem>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The supplementary groups of `user` with primary group `gid`, as `initgroups` sets them.
    fn groups(&self, user: &UserEntry, gid: u32) -> Vec<u32>;
    /// Whether this process runs as root.
    fn is_root(&self) -> bool;
    /// Whether this process runs as root or holds any effective capability (so it could start
    /// workers as root).
    fn privileged(&self) -> bool;
    /// The number of CPUs this process may use.
    fn cpus(&self) -> u32;
}

/// The machine this process runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Host for System {
    fn user(&self, name_or_uid: &str) -> Option<UserEntry> {
        let found = match name_or_uid.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(name_or_uid),
        };
        let user = found.ok().flatten()?;
        Some(UserEntry { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw() })
    }

    fn group(&self, name_or_gid: &str) -> Option<u32> {
        let found = match name_or_gid.parse::<u32>() {
            Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
            Err(_) => Group::from_name(name_or_gid),
        };
        Some(found.ok().flatten()?.gid.as_raw())
    }

    fn program(&self, program: &Path) -> Result<PathBuf, CommandProblem> {
        let resolved = if program.components().count() > 1 {
            // A path: `which` also checks that it is an executable file.
            which::which(program).map_err(|_| match program.exists() {
                true => CommandProblem::NotExecutable,
                false => CommandProblem::Missing,
            })?
        } else {
            which::which(program).map_err(|_| CommandProblem::NotInPath)?
        };
        Ok(std::path::absolute(&resolved).unwrap_or(resolved))
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn groups(&self, user: &UserEntry, gid: u32) -> Vec<u32> {
        let Ok(name) = CString::new(user.name.as_str()) else { return vec![gid] };
        let groups = getgrouplist(&name, Gid::from_raw(gid)).unwrap_or_default();
        let mut groups: Vec<u32> = groups.into_iter().map(Gid::as_raw).collect();
        if !groups.contains(&gid) {
            groups.insert(0, gid);
        }
        groups
    }

    fn is_root(&self) -> bool {
        Uid::effective().is_root()
    }

    fn privileged(&self) -> bool {
        let effective = caps::read(None, caps::CapSet::Effective);
        self.is_root() || effective.map_or(true, |set| !set.is_empty())
    }

    fn cpus(&self) -> u32 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    }
}
