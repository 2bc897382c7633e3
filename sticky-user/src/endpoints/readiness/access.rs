//! Who may send to a notify socket: the workers' user, let in by a POSIX ACL on each socket
//! file, and the check that this user really reaches one.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _, net::UnixDatagram},
    path::Path,
    thread,
};

use nix::unistd::{User, getegid, geteuid};

use crate::config::RunConfig;

/// The workers' user, the one the notify sockets let in.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// Its name, for messages.
    pub(crate) user: String,
    /// Its uid.
    pub(crate) uid: u32,
    /// The workers' gid.
    pub(crate) gid: u32,
}

impl Identity {
    /// The workers' user and group in `config` (`--user`, `--group`), or the loader's own.
    pub(crate) fn of(config: &RunConfig) -> Self {
        match &config.credentials {
            Some(credentials) => {
                Self { user: credentials.user.clone(), uid: credentials.uid, gid: credentials.gid }
            }
            None => {
                let uid = geteuid();
                let user = User::from_uid(uid).ok().flatten().map_or(uid.to_string(), |u| u.name);
                Self { user, uid: uid.as_raw(), gid: getegid().as_raw() }
            }
        }
    }
}

/// Gives `uid` write permission (what connecting to a socket needs) on `path`, which this
/// process owns: the POSIX ACL `user::rw-, user:UID:-w-, group::---, mask::-w-, other::---`.
/// The file's owner may set it without CAP_FOWNER; tmpfs, ext4, xfs and btrfs support it.
pub(super) fn grant_write(path: &Path, uid: u32) -> io::Result<()> {
    set_acl(path, [0o6, 0], uid, 0o2, 0)
}

/// Lets `uid` pass through directory `dir`, which this process owns, and changes nothing for
/// anyone else: its mode bits as an ACL, plus `user:UID:--x` (search, not list). So the
/// workers reach their sockets in a runtime directory of mode 0750 (or a state directory of
/// 0700) that only the loader may otherwise enter.
pub(super) fn grant_search(dir: &Path, uid: u32) -> io::Result<()> {
    let mode = fs::metadata(dir)?.mode();
    let bits = |shift: u32| ((mode >> shift) & 0o7) as u16;
    set_acl(dir, [bits(6), bits(3)], uid, 0o1, bits(0))
}

/// Sets the access ACL of `path`: `user::OWNER, user:UID:NAMED, group::GROUP,
/// mask::(GROUP|NAMED), other::OTHER` (`[owner, group]` in `classes`).
fn set_acl(path: &Path, classes: [u16; 2], uid: u32, named: u16, other: u16) -> io::Result<()> {
    // The kernel's xattr form of an ACL (linux/posix_acl_xattr.h): a version, then entries
    // (tag, permissions, id), little-endian, sorted by tag.
    const VERSION: u32 = 2;
    const UNDEFINED: u32 = u32::MAX;
    let [owner, group] = classes;
    let entries: [(u16, u16, u32); 5] = [
        (0x01, owner, UNDEFINED),         // ACL_USER_OBJ: the owner (the loader)
        (0x02, named, uid),               // ACL_USER: the workers' user
        (0x04, group, UNDEFINED),         // ACL_GROUP_OBJ
        (0x10, group | named, UNDEFINED), // ACL_MASK: what the named entry and group may have
        (0x20, other, UNDEFINED),         // ACL_OTHER
    ];
    let mut value = VERSION.to_le_bytes().to_vec();
    for (tag, permissions, id) in entries {
        value.extend(tag.to_le_bytes());
        value.extend(permissions.to_le_bytes());
        value.extend(id.to_le_bytes());
    }
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: both names are NUL-terminated strings and `value` is valid for its length.
    let ret = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if ret == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether `workers` may send to the socket at `path`: a thread whose file-system ids are
/// theirs (setfsuid, setfsgid: CAP_SETUID, CAP_SETGID, which starting them as that user needs
/// anyway) connects to it. The kernel checks every directory on the way and the ACL.
pub(super) fn reachable(path: &Path, workers: &Identity) -> io::Result<()> {
    let connect = || {
        // SAFETY: setfsgid(2) and setfsuid(2) change this thread's file-system ids only (the C
        // library does not apply them to other threads), and the thread ends right after.
        unsafe {
            libc::setfsgid(workers.gid);
            libc::setfsuid(workers.uid);
        }
        // setfsuid returns the previous id even when it fails: an invalid id asks which it is.
        // SAFETY: as above; an invalid id changes nothing.
        if unsafe { libc::setfsuid(u32::MAX) } as u32 != workers.uid {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        UnixDatagram::unbound()?.connect(path)
    };
    thread::scope(|scope| scope.spawn(connect).join())
        .unwrap_or_else(|_| Err(io::Error::other("the check panicked")))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use nix::unistd::Uid;

    use super::*;
    use crate::endpoints::readiness::NotifyDir;

    #[test]
    fn as_root_a_socket_reaches_the_workers_user_and_nobody_else() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root to take another user's file-system ids");
            return;
        }
        let path = std::env::temp_dir().join(format!("sticky-access-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        let nobody = Identity { user: "nobody".into(), uid: 65534, gid: 65534 };
        let mut dir = NotifyDir::create(path.clone(), nobody.clone()).unwrap();
        let inbox = dir.bind(0).unwrap();
        reachable(inbox.path(), &nobody).unwrap();
        let other = Identity { user: "other".into(), uid: 65533, gid: 65533 };
        let err = reachable(inbox.path(), &other).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        dir.remove();
    }
}
