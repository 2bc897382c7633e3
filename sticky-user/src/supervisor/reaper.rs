//! Waiting for a worker to exit, by pid: through a pidfd, so a worker started by an earlier
//! image of this loader (before `sticky upgrade`) is waited for like one started now.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

use nix::{
    sys::{
        signal::{Signal, kill, killpg},
        wait::{WaitStatus, waitpid},
    },
    unistd::Pid,
};
use tokio::io::{Interest, unix::AsyncFd};

use super::worker::Exit;

/// A child process being watched: resolves once it has exited and was reaped.
pub(super) struct Exiting {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
}

impl Exiting {
    /// Watches child `pid` (not yet reaped). Needs the tokio runtime.
    pub(super) fn watch(pid: u32) -> io::Result<Self> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the fd was just opened and nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: an OwnedFd's fd stays open and the same for as long as it is owned.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { pid, pidfd })
    }

    /// Waits until the process exits, reaps it and says how it ended.
    pub(super) async fn wait(self) -> Exit {
        // A pidfd is readable once its process has exited.
        if let Err(err) = self.pidfd.readable().await {
            return Exit::unwaitable(err);
        }
        match waitpid(Pid::from_raw(self.pid as i32), None) {
            Ok(status) => Exit::of(status),
            Err(err) => Exit::unwaitable(err.into()),
        }
    }
}

/// Kills child `pid` (its process group, which it leads) and reaps it: a worker whose exit could
/// not be watched must not run untracked.
pub(super) fn kill_and_reap(pid: u32) {
    let pid = Pid::from_raw(pid as i32);
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

impl Exit {
    /// From the status `waitpid` returned.
    fn of(status: WaitStatus) -> Self {
        Self::new(match status {
            WaitStatus::Exited(_, code) => format!("exited with status {code}"),
            WaitStatus::Signaled(_, signal, _) => {
                format!("was killed by signal {}", signal as i32)
            }
            other => format!("ended ({other:?})"),
        })
    }

    fn unwaitable(err: io::Error) -> Self {
        Self::new(format!("could not be waited for ({err})"))
    }
}
