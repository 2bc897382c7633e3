//! The forked child between fork and exec: it takes the worker's identity, gives up every
//! privilege and moves the slot's sockets into place. System calls only, no allocation.

use std::{ffi::CStr, io, os::fd::RawFd};

use nix::{
    sys::{
        prctl,
        resource::{Resource, getrlimit},
        signal::Signal,
    },
    unistd::{Gid, Uid, getppid},
};
use sticky_worker::LISTEN_FDS_START;

use crate::{
    config::{Credentials, MAX_LISTEN_ADDRESSES},
    limits,
};

/// The user, group and supplementary groups a child switches to before exec.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

impl Identity {
    /// The identity for `credentials`, or `None` when they are the loader's own and it is not
    /// root (nothing to switch, and no privilege to do it with).
    pub(super) fn switch_to(credentials: &Credentials) -> Option<Self> {
        let (uid, gid) = (Uid::effective(), Gid::effective());
        let own = credentials.uid == uid.as_raw() && credentials.gid == gid.as_raw();
        if own && !uid.is_root() {
            return None;
        }
        let groups = if credentials.groups.is_empty() {
            vec![credentials.gid]
        } else {
            credentials.groups.clone()
        };
        Some(Self { uid: credentials.uid, gid: credentials.gid, groups })
    }
}

/// In the forked child: become the workers' user without any privilege, die with the loader,
/// and keep only fds 0–2 and the slot's sockets, moved to fd 3 onwards.
///
/// Runs between fork and exec: system calls only, no allocation.
pub(super) fn prepare_child(
    loader: u32,
    fds: &[RawFd],
    identity: Option<&Identity>,
    dir: Option<&CStr>,
) -> io::Result<()> {
    let check = |ret: libc::c_int| if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) };
    // The death signal is cleared by a change of user or group: set it after become_worker's.
    become_worker(identity, dir)?;
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid().as_raw() as u32 != loader {
        // The loader died before the line above took effect. (No allocation after fork.)
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // First copy every socket above the target range, so no dup2 below overwrites a source.
    if fds.len() > MAX_LISTEN_ADDRESSES {
        return Err(io::Error::from_raw_os_error(libc::EMFILE));
    }
    let above = LISTEN_FDS_START + fds.len() as RawFd;
    let mut copies = [0 as RawFd; MAX_LISTEN_ADDRESSES];
    for (copy, &fd) in copies.iter_mut().zip(fds) {
        // SAFETY: F_DUPFD_CLOEXEC on an fd this process owns; the copy closes at exec.
        *copy = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) })?;
    }
    for (target, &copy) in (LISTEN_FDS_START..).zip(&copies[..fds.len()]) {
        // SAFETY: the target is in the range reserved for the listeners.
        check(unsafe { libc::dup2(copy, target) })?;
        // dup2 onto an fd equal to its source keeps FD_CLOEXEC: clear it in every case.
        // SAFETY: F_SETFD on the fd just made.
        check(unsafe { libc::fcntl(target, libc::F_SETFD, 0) })?;
    }
    close_at_exec_from(above)
}

/// In a forked child: takes `identity` (supplementary groups, group, user) when given, then
/// gives up every capability and can never gain one (no_new_privs), gets back the limits and
/// umask the loader started with, and enters `dir` as the new user.
///
/// Leaving root clears the permitted, effective and ambient sets but not the inheritable one,
/// and a loader that is not root keeps its ambient set across exec: so both are emptied here,
/// whoever the loader and the workers are. Runs between fork and exec: system calls only.
pub(super) fn become_worker(identity: Option<&Identity>, dir: Option<&CStr>) -> io::Result<()> {
    let check = |ret: libc::c_int| if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) };
    if let Some(identity) = identity {
        // SAFETY: setgroups reads `groups.len()` gids from the vector's buffer.
        check(unsafe { libc::setgroups(identity.groups.len(), identity.groups.as_ptr()) })?;
        // SAFETY: plain system calls on ids.
        check(unsafe { libc::setresgid(identity.gid, identity.gid, identity.gid) })?;
        // SAFETY: as above.
        check(unsafe { libc::setresuid(identity.uid, identity.uid, identity.uid) })?;
    }
    // A set-user-ID program the worker runs gains nothing.
    prctl::set_no_new_privs()?;
    drop_capabilities()?;
    limits::restore()?;
    if let Some(dir) = dir {
        // SAFETY: chdir with a NUL-terminated path.
        check(unsafe { libc::chdir(dir.as_ptr()) })?;
    }
    Ok(())
}

/// Empties the ambient, inheritable, permitted and effective capability sets (which needs no
/// privilege). The bounding set stays: with no_new_privs and empty sets, nothing is regained
/// from it.
fn drop_capabilities() -> io::Result<()> {
    /// `struct __user_cap_header_struct`.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    /// `struct __user_cap_data_struct`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    /// `_LINUX_CAPABILITY_VERSION_3`: two data structs, 64 capabilities.
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl with integer arguments.
    let cleared = unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0)
    };
    // EINVAL: a kernel older than 4.3 has no ambient set.
    if cleared < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::last_os_error());
    }
    let header = Header { version: VERSION_3, pid: 0 };
    let none = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset(2) reads one header and two data structs.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, none.as_ptr()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Marks every fd from `first` up close-on-exec: whatever sticky's own parent leaked to it
/// stays out of the worker. (Marked rather than closed: std reports a failed exec through
/// one of them.)
fn close_at_exec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets flags (Linux 5.11+).
    let ret = unsafe {
        libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC)
    };
    if ret == 0 {
        return Ok(());
    }
    // Older kernels: one fcntl per possible fd, up to the fd limit.
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft.min(1 << 20));
    for fd in first..limit as RawFd {
        // SAFETY: F_SETFD on a number that may or may not be an open fd (EBADF is ignored).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}
