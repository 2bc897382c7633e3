//! The notify directory: where the loader binds each worker's readiness socket, only it may
//! write, and each socket file lets only the workers' user in.
//!
//! A socket is bound in `.new/` (mode 0700: nobody else can reach it yet), given mode 0600 and
//! the ACL, and only then linked into the directory under a name nothing holds: nobody can
//! connect to a socket before its permissions are set, and no name can be taken in advance.

use std::{
    ffi::OsStr,
    fs::{self, DirBuilder, Permissions},
    io,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
        net::UnixDatagram,
    },
    path::{Path, PathBuf},
};

use nix::{
    sys::socket::{setsockopt, sockopt::PassCred},
    unistd::geteuid,
};
use thiserror::Error;

use super::{
    access::{Identity, grant_search, grant_write, reachable},
    inbox::Inbox,
};
use crate::{
    dir_safety::{self, Owners, Stat, Unsafe, Writers},
    path_error::PathError,
};

/// Where sockets are bound before they get their permissions and their name.
const STAGING: &str = ".new";

/// The directory's mode: the workers' user may pass through it to its socket, not list it.
const MODE: u32 = 0o711;

/// Why the notify directory cannot be used.
#[derive(Debug, Error)]
pub enum NotifyDirError {
    /// Something other than a directory is at its path.
    #[error("{} exists and is not a directory: remove it", .0.display())]
    NotADirectory(PathBuf),
    /// It belongs to another user, who could take the workers' socket names.
    #[error("notify directory {} belongs to uid {owner}, not to sticky's uid {uid}: remove it", path.display())]
    Foreign {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The loader's effective uid.
        uid: u32,
    },
    /// Others may write to it.
    #[error("notify directory {} is writable by its group or others (mode {mode:o}): remove it", path.display())]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It cannot be created, read or emptied.
    #[error(transparent)]
    Io(#[from] PathError),
    /// A socket that only the workers' user can reach cannot be made in it (a file system
    /// without POSIX ACLs, a path too long for a socket address).
    #[error("cannot make a notify socket in {} that only user {user} can reach", path.display())]
    Bind {
        /// The directory.
        path: PathBuf,
        /// The workers' user.
        user: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The workers' user cannot reach a socket in it (a directory above it that this user may
    /// not search).
    #[error("the workers' user {user} cannot reach their notify socket in {}", path.display())]
    Unreachable {
        /// The directory.
        path: PathBuf,
        /// The workers' user.
        user: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The notify directory of a loader whose control socket is `control`: `notify` in
/// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`, the first one if several), or else
/// `CONTROL.notify` beside the control socket.
pub(crate) fn location(control: &Path) -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY").filter(|dirs| !dirs.is_empty()) {
        Some(dirs) => {
            let first = dirs.as_bytes().split(|&byte| byte == b':').next().unwrap_or_default();
            Path::new(OsStr::from_bytes(first)).join("notify")
        }
        None => {
            let mut path = control.as_os_str().to_owned();
            path.push(".notify");
            path.into()
        }
    }
}

/// The loader's notify directory.
#[derive(Debug)]
pub(crate) struct NotifyDir {
    path: PathBuf,
    workers: Identity,
    /// The loader's effective uid: the owner of the directory and of every socket in it.
    owner: u32,
    /// The number in the next socket's name.
    next: u64,
}

impl NotifyDir {
    /// Creates the directory at `path` (or takes an existing one that belongs to this uid and
    /// that nobody else may write to), removes what an earlier loader left in it, and checks
    /// that a socket made there reaches `workers` and nobody else.
    pub(crate) fn create(path: PathBuf, workers: Identity) -> Result<Self, NotifyDirError> {
        let owner = geteuid().as_raw();
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                check_existing(&path, owner)?;
            }
            Err(source) => return Err(PathError { action: "create", path, source }.into()),
        }
        empty(&path)?;
        let staging = path.join(STAGING);
        DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(PathError::at("create", &staging))?;
        fs::set_permissions(&path, Permissions::from_mode(MODE))
            .map_err(PathError::at("chmod", &path))?;
        if workers.uid != owner {
            let_through(&path, owner, workers.uid)?;
        }
        let mut dir = Self { path, workers, owner, next: 0 };
        // A directory no worker could use is not left behind.
        dir.trial().inspect_err(|_| dir.remove())?;
        Ok(dir)
    }

    /// The directory at `path` that an earlier image of this loader created (an upgrade), with
    /// the sockets of the workers it hands over.
    pub(crate) fn adopt(path: PathBuf, workers: Identity) -> Self {
        Self { path, workers, owner: geteuid().as_raw(), next: 0 }
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The workers' uid: besides root, the only sender whose datagrams count.
    pub(crate) fn sender(&self) -> u32 {
        self.workers.uid
    }

    /// Binds the notify socket of a new worker of `slot`, named `SLOT-N.sock`.
    pub(crate) fn bind(&mut self, slot: usize) -> io::Result<Inbox> {
        let (socket, path) = self.bind_named(&slot.to_string())?;
        Ok(Inbox::new(socket, path, self.workers.uid))
    }

    /// Removes the directory and every socket in it (the loader stops).
    pub(crate) fn remove(&self) {
        let _ = fs::remove_dir_all(&self.path);
    }

    /// Binds a socket in the staging directory, sets its permissions, and links it into the
    /// directory as `PREFIX-N.sock`, N the first free number from `next` on.
    fn bind_named(&mut self, prefix: &str) -> io::Result<(UnixDatagram, PathBuf)> {
        let staged = self.path.join(STAGING).join(prefix);
        let socket = self.bind_private(&staged)?;
        let published = loop {
            let path = self.path.join(format!("{prefix}-{}.sock", self.next));
            self.next += 1;
            // link(2) never replaces: a name in use (an adopted worker's) is skipped.
            match fs::hard_link(&staged, &path) {
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                result => break result.map(|()| path),
            }
        };
        let _ = fs::remove_file(&staged);
        Ok((socket, published?))
    }

    /// Binds a socket at `path`, in the staging directory, with mode 0600 and, for workers of
    /// another user, the ACL that lets that user write to it. Non-blocking, with SO_PASSCRED.
    fn bind_private(&self, path: &Path) -> io::Result<UnixDatagram> {
        let _ = fs::remove_file(path);
        let socket = UnixDatagram::bind(path)?;
        let permit = || {
            fs::set_permissions(path, Permissions::from_mode(0o600))?;
            if self.workers.uid != self.owner {
                grant_write(path, self.workers.uid)?;
            }
            setsockopt(&socket, PassCred, &true)?;
            socket.set_nonblocking(true)
        };
        if let Err(err) = permit() {
            let _ = fs::remove_file(path);
            return Err(err);
        }
        Ok(socket)
    }

    /// Makes a socket as a worker's would be, and checks that the workers' user reaches it.
    fn trial(&mut self) -> Result<(), NotifyDirError> {
        let (path, user) = (self.path.clone(), self.workers.user.clone());
        let (socket, trial) = self.bind_named(".trial").map_err(|source| NotifyDirError::Bind {
            path: path.clone(),
            user: user.clone(),
            source,
        })?;
        let reached =
            if self.workers.uid == self.owner { Ok(()) } else { reachable(&trial, &self.workers) };
        drop(socket);
        let _ = fs::remove_file(&trial);
        self.next = 0;
        reached.map_err(|source| NotifyDirError::Unreachable { path, user, source })
    }
}

/// Lets the workers' `uid` through the directory that holds the notify directory `path`
/// when `owner` (the loader) owns it and others may not search it: the instance's runtime
/// directory (mode 0750), or the directory of a control socket sticky made (0700).
fn let_through(path: &Path, owner: u32, uid: u32) -> Result<(), NotifyDirError> {
    let Some(parent) = path.parent() else { return Ok(()) };
    let metadata = fs::metadata(parent).map_err(PathError::at("read", parent))?;
    if metadata.uid() == owner && metadata.mode() & 0o001 == 0 {
        grant_search(parent, uid).map_err(PathError::at("let the workers through", parent))?;
    }
    Ok(())
}

/// Refuses an existing `path` that is not a directory of `owner` closed to others.
fn check_existing(path: &Path, owner: u32) -> Result<(), NotifyDirError> {
    let metadata = fs::symlink_metadata(path).map_err(PathError::at("read", path))?;
    if !metadata.is_dir() {
        return Err(NotifyDirError::NotADirectory(path.into()));
    }
    let path = path.into();
    match dir_safety::check(Stat::from(&metadata), owner, Owners::Us, Writers::OwnerOnly) {
        Ok(()) => Ok(()),
        Err(Unsafe::Owner { owner: found, .. }) => {
            Err(NotifyDirError::Foreign { path, owner: found, uid: owner })
        }
        Err(Unsafe::GroupWritable { mode } | Unsafe::OthersWritable { mode }) => {
            Err(NotifyDirError::Writable { path, mode })
        }
    }
}

/// Removes everything in `path` (stale sockets of a loader that died), not following links.
fn empty(path: &Path) -> Result<(), PathError> {
    for entry in fs::read_dir(path).map_err(PathError::at("read", path))? {
        let entry = entry.map_err(PathError::at("read", path))?;
        let stale = entry.path();
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => fs::remove_dir_all(&stale),
            _ => fs::remove_file(&stale),
        };
        removed.map_err(PathError::at("remove", &stale))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nix::unistd::{Uid, getegid};

    use super::*;

    fn root() -> bool {
        Uid::effective().is_root()
    }

    fn scratch(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("sticky-notify-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        path
    }

    fn me() -> Identity {
        Identity { user: "me".into(), uid: geteuid().as_raw(), gid: getegid().as_raw() }
    }

    #[test]
    fn a_fresh_directory_is_closed_to_others_and_its_sockets_to_all_but_the_owner() {
        let path = scratch("fresh");
        let mut dir = NotifyDir::create(path.clone(), me()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, MODE);
        let inbox = dir.bind(3).unwrap();
        assert_eq!(inbox.path(), path.join("3-0.sock"));
        let mode = fs::symlink_metadata(inbox.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(dir.bind(3).unwrap().path(), path.join("3-1.sock"));
        // Only the live socket and the staging directory are left.
        let names: Vec<_> = fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        drop(inbox);
        assert!(!path.join("3-0.sock").exists(), "a dropped inbox leaves its file");
        dir.remove();
    }

    #[test]
    fn stale_sockets_are_removed_and_names_in_use_skipped() {
        let path = scratch("stale");
        let mut first = NotifyDir::create(path.clone(), me()).unwrap();
        let kept = first.bind(0).unwrap();
        // An upgrade's new image goes on in the same directory: it skips the name in use.
        let mut adopted = NotifyDir::adopt(path.clone(), me());
        assert_eq!(adopted.bind(0).unwrap().path(), path.join("0-1.sock"));
        // A new loader (the first one died) starts afresh and takes every name.
        std::mem::forget(kept);
        let mut fresh = NotifyDir::create(path.clone(), me()).unwrap();
        assert_eq!(fresh.bind(0).unwrap().path(), path.join("0-0.sock"));
        fresh.remove();
    }

    #[test]
    fn a_directory_others_may_write_to_or_not_a_directory_is_refused() {
        let path = scratch("writable");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o775)).unwrap();
        let err = NotifyDir::create(path.clone(), me()).unwrap_err();
        assert!(matches!(err, NotifyDirError::Writable { mode: 0o775, .. }), "{err}");
        fs::remove_dir(&path).unwrap();
        std::os::unix::fs::symlink("/tmp", &path).unwrap();
        let err = NotifyDir::create(path.clone(), me()).unwrap_err();
        assert!(matches!(err, NotifyDirError::NotADirectory(_)), "{err}");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if !root() {
            eprintln!("skipped: needs root to give a directory away");
            return;
        }
        let path = scratch("foreign");
        fs::create_dir(&path).unwrap();
        nix::unistd::chown(&path, Some(Uid::from_raw(65533)), None).unwrap();
        let err = NotifyDir::create(path.clone(), me()).unwrap_err();
        assert!(matches!(err, NotifyDirError::Foreign { owner: 65533, .. }), "{err}");
        fs::remove_dir(&path).unwrap();
    }
}
