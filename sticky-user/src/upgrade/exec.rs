//! The handover itself: the record in a memfd, every fd it names kept open across exec, and
//! execve of the sticky binary at its path, in this process.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use nix::{
    fcntl::{FcntlArg, FdFlag, fcntl},
    sys::signal::{SigSet, Signal},
    unistd::execv,
};

use super::{RESUME, UpgradeError, record::Record};
use crate::endpoints::notify;

/// The signals that would stop or confuse the loader between the exec and the moment the new
/// image handles them: blocked across the exec (the mask survives it), so they wait.
pub(crate) fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGUSR2] {
        set.add(signal);
    }
    set
}

/// Re-executes `executable` as `sticky resume --state-fd N` with `record`. Returns only if that
/// failed, with every fd as it was.
pub(crate) fn exec(executable: &Path, record: &Record) -> UpgradeError {
    let failed = |reason: String| UpgradeError::Exec { path: executable.into(), reason };
    let memfd = match record.to_memfd() {
        Ok(memfd) => memfd,
        Err(err) => return failed(format!("cannot write the state record: {err}")),
    };
    let mut fds = record.fds();
    fds.push(memfd.as_raw_fd());
    let argv = [
        executable.as_os_str().as_bytes(),
        RESUME.as_bytes(),
        b"--state-fd",
        memfd.as_raw_fd().to_string().as_bytes(),
    ]
    .map(|arg| CString::new(arg).expect("paths and numbers hold no NUL"));
    if let Err((fd, err)) = set_close_on_exec(&fds, false) {
        let _ = set_close_on_exec(&fds, true);
        return failed(format!("cannot keep fd {fd} open across exec: {err}"));
    }
    let signals = handled_signals();
    let _ = signals.thread_block();
    // RELOADING=1 must reach systemd before this image is gone.
    notify::flush(std::time::Duration::from_secs(1));
    let Err(err) = execv(&argv[0], &argv);
    let _ = signals.thread_unblock();
    let _ = set_close_on_exec(&fds, true);
    failed(err.to_string())
}

/// Sets or clears close-on-exec on every fd of `fds`; on failure, says which fd.
pub(super) fn set_close_on_exec(fds: &[RawFd], close: bool) -> Result<(), (RawFd, nix::Error)> {
    let flags = if close { FdFlag::FD_CLOEXEC } else { FdFlag::empty() };
    for &fd in fds {
        // SAFETY: a borrow for one fcntl; an fd that is not open fails with EBADF.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        fcntl(borrowed, FcntlArg::F_SETFD(flags)).map_err(|err| (fd, err))?;
    }
    Ok(())
}
