//! The worker side of systemd's socket-activation protocol, as sticky speaks it.
//!
//! sticky starts worker `i` with its listening sockets at fd 3, 4, … and sets `LISTEN_FDS` (how
//! many), `LISTEN_PID` (the worker's own pid), `LISTEN_FDNAMES` (colon-separated names),
//! `STICKY_WORKER` (the slot, `i`) and `STICKY_WORKERS` (how many slots). Any program that
//! speaks this protocol can be a worker; Rust workers call [`listeners`].

use std::{
    env,
    net::TcpListener,
    os::fd::{FromRawFd as _, RawFd},
};

use thiserror::Error;

/// The first inherited fd.
pub const LISTEN_FDS_START: RawFd = 3;
/// Number of inherited listening sockets.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// The pid the sockets are meant for.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Colon-separated names of the inherited sockets.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The worker's slot, `0..STICKY_WORKERS`.
pub const STICKY_WORKER: &str = "STICKY_WORKER";
/// The number of worker slots.
pub const STICKY_WORKERS: &str = "STICKY_WORKERS";

/// Why the inherited listeners cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WorkerError {
    /// A protocol variable is missing (not started by sticky or systemd).
    #[error("{0} is not set: start this worker with `sticky run -- CMD`")]
    Unset(&'static str),
    /// A protocol variable does not hold a number.
    #[error("{name} is not a number: '{value}'")]
    NotANumber {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// An fd the protocol promises is not open.
    #[error("LISTEN_FDS promises fd {0}, but it is not open")]
    NotOpen(RawFd),
    /// The sockets were meant for another process.
    #[error("LISTEN_PID is {0}, not this process ({1})")]
    OtherProcess(u32, u32),
}

/// This worker's slot and the number of slots, from `STICKY_WORKER` and `STICKY_WORKERS`.
pub fn slot() -> Result<(u32, u32), WorkerError> {
    Ok((number(STICKY_WORKER)?, number(STICKY_WORKERS)?))
}

/// Takes the listening sockets this process inherited (fd 3 onwards), after checking that
/// `LISTEN_PID` names this process. Call it once: the fds become owned by the result.
pub fn listeners() -> Result<Vec<TcpListener>, WorkerError> {
    let pid: u32 = number(LISTEN_PID)?;
    if pid != std::process::id() {
        return Err(WorkerError::OtherProcess(pid, std::process::id()));
    }
    let count: RawFd = number(LISTEN_FDS)?;
    let fds = LISTEN_FDS_START..LISTEN_FDS_START + count;
    for fd in fds.clone() {
        // Like sd_listen_fds: the sockets are not passed on to this worker's own children.
        // SAFETY: fcntl on an integer fd has no memory-safety preconditions.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(WorkerError::NotOpen(fd));
        }
    }
    // SAFETY: the protocol hands these open fds to this process, and this function is their
    // only taker.
    Ok(fds.map(|fd| unsafe { TcpListener::from_raw_fd(fd) }).collect())
}

/// With `--dispatch userspace` (`STICKY_HANDOFF=1`), the inherited handoff socket that
/// connections arrive on (see [`crate::handoff`]); `None` otherwise.
pub fn handoff_socket() -> Result<Option<std::os::fd::OwnedFd>, WorkerError> {
    if env::var(crate::handoff::STICKY_HANDOFF).as_deref() != Ok("1") {
        return Ok(None);
    }
    let pid: u32 = number(LISTEN_PID)?;
    if pid != std::process::id() {
        return Err(WorkerError::OtherProcess(pid, std::process::id()));
    }
    // SAFETY: fcntl on an integer fd has no memory-safety preconditions.
    if unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(WorkerError::NotOpen(LISTEN_FDS_START));
    }
    // SAFETY: the protocol hands fd 3 to this process, and this function is its only taker.
    Ok(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(LISTEN_FDS_START) }))
}

fn number<T: std::str::FromStr>(name: &'static str) -> Result<T, WorkerError> {
    let value = env::var(name).map_err(|_| WorkerError::Unset(name))?;
    value.trim().parse().map_err(|_| WorkerError::NotANumber { name, value })
}
