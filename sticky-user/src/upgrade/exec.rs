//! The handover itself: the record in a memfd, every fd it names kept open across exec, and
//! execveat of the binary the upgrade opened and checked, by its fd, in this process.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, BorrowedFd, RawFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
};

use nix::{
    fcntl::{AtFlags, FcntlArg, FdFlag, fcntl},
    sys::signal::{SigSet, Signal},
    unistd::execveat,
};

use super::{RESUME, UpgradeError, image::Image, record::Record};
use crate::endpoints::systemd;

/// The signals that would stop or confuse the loader between the exec and the moment the new
/// image handles them: blocked across the exec (the mask survives it), so they wait.
pub(crate) fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGUSR2] {
        set.add(signal);
    }
    set
}

/// Executes `image` as `sticky resume --state-fd N` with `record`. Returns only if that
/// failed, with every fd as it was.
pub(crate) fn exec(image: &Image, record: &Record) -> UpgradeError {
    let failed = |reason: String| UpgradeError::Exec { path: image.path().into(), reason };
    let memfd = match record.to_memfd() {
        Ok(memfd) => memfd,
        Err(err) => return failed(format!("cannot write the state record: {err}")),
    };
    let mut fds = record.fds();
    fds.push(memfd.as_raw_fd());
    let state_fd = memfd.as_raw_fd().to_string();
    let argv = [
        image.path().as_os_str().as_bytes(),
        RESUME.as_bytes(),
        b"--state-fd",
        state_fd.as_bytes(),
    ];
    if let Err((fd, err)) = set_close_on_exec(&fds, false) {
        let _ = set_close_on_exec(&fds, true);
        return failed(format!("cannot keep fd {fd} open across exec: {err}"));
    }
    let signals = handled_signals();
    let _ = signals.thread_block();
    // RELOADING=1 must reach systemd before this image is gone.
    systemd::flush(std::time::Duration::from_secs(1));
    let err = execute(image.fd(), &argv);
    let _ = signals.thread_unblock();
    let _ = set_close_on_exec(&fds, true);
    failed(err.to_string())
}

/// execveat(2) of the open file `image` (`AT_EMPTY_PATH`) with `argv` and this process's
/// environment. The fd may be close-on-exec, as long as the file is an ELF binary (a script's
/// interpreter could not open it). Returns only on failure.
pub(super) fn execute(image: BorrowedFd<'_>, argv: &[&[u8]]) -> nix::Error {
    let cstring = |bytes: Vec<u8>| CString::new(bytes).map_err(|_| nix::Error::EINVAL);
    let argv: Result<Vec<CString>, _> = argv.iter().map(|arg| cstring(arg.to_vec())).collect();
    let environment: Result<Vec<CString>, _> = std::env::vars_os()
        .map(|(key, value)| {
            let mut pair = key;
            pair.push("=");
            pair.push(value);
            cstring(pair.into_vec())
        })
        .collect();
    let (argv, environment) = match (argv, environment) {
        (Ok(argv), Ok(environment)) => (argv, environment),
        (Err(err), _) | (_, Err(err)) => return err,
    };
    let Err(err) = execveat(image, c"", &argv, &environment, AtFlags::AT_EMPTY_PATH);
    err
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
