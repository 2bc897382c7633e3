//! The way back: a new image that cannot take over executes the old one again, by the fd the
//! old image kept open for it (its `/proc/self/exe`), with the same record and the reason. The
//! old image then takes over as after an upgrade, so the loader goes on with the same pid,
//! workers and sockets, and reports the upgrade as failed.

use std::os::{
    fd::{BorrowedFd, RawFd},
    unix::ffi::OsStrExt as _,
};

use thiserror::Error;

use super::{
    RESUME,
    exec::execute,
    record::{HandBack, RecordError},
};

/// The `sticky resume` option that gives the old image the loader back, with the reason.
const ROLLBACK: &str = "--rollback";

/// Why the old image could not be given the loader back.
#[derive(Debug, Error)]
pub enum HandBackError {
    /// The record could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record names no old image (it comes from a sticky that does not keep one).
    #[error("the record names no previous image")]
    NoImage,
    /// The exec failed.
    #[error("cannot execute the previous image")]
    Exec(#[source] nix::Error),
}

/// Gives the loader back to the image that handed it over: executes that image again as
/// `sticky resume --state-fd N --rollback REASON`. Returns only if it cannot.
///
/// # Safety
///
/// `state_fd` must be the record an upgrade passed to this process, and every fd it names must
/// still be open as it was passed (nothing taken over, nothing made close-on-exec).
pub(crate) unsafe fn hand_back(state_fd: RawFd, reason: &str) -> HandBackError {
    // SAFETY: guaranteed by the caller.
    let record = unsafe { BorrowedFd::borrow_raw(state_fd) };
    let HandBack { executable, previous_image } = match HandBack::read(record) {
        Ok(hand_back) => hand_back,
        Err(err) => return err.into(),
    };
    let Some(image) = previous_image else { return HandBackError::NoImage };
    let argv0 =
        executable.as_deref().map_or(b"sticky".as_slice(), |path| path.as_os_str().as_bytes());
    let state_fd = state_fd.to_string();
    let argv = [
        argv0,
        RESUME.as_bytes(),
        b"--state-fd",
        state_fd.as_bytes(),
        ROLLBACK.as_bytes(),
        reason.as_bytes(),
    ];
    // SAFETY: guaranteed by the caller: the record names it, open.
    HandBackError::Exec(execute(unsafe { BorrowedFd::borrow_raw(image) }, &argv))
}
