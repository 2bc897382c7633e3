//! Runs one worker per slot, restarts the ones that exit, and stops them all on SIGINT/SIGTERM.
//!
//! Worker `i` is started on slot `i`'s listening sockets, which the loader keeps open for its
//! whole life, so a restarted worker serves the connections that queued while it was away.
//! Workers get SIGKILL if the loader dies (PR_SET_PDEATHSIG) and run in their own process group,
//! so a terminal's Ctrl-C reaches only the loader, which then stops them in order.

use std::{
    ffi::OsString,
    io,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::process::CommandExt as _,
    },
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    process::{Child, Command},
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinSet,
    time::{sleep, timeout},
};
use tracing::{info, warn};

use crate::{
    config::{MAX_LISTEN_ADDRESSES, WorkerCommand},
    listeners::ListenerGroup,
    worker::{
        LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_START, LISTEN_PID, STICKY_WORKER, STICKY_WORKERS,
    },
};

/// The hidden `sticky` subcommand that sets `LISTEN_PID` to its own pid and then execs the
/// worker, keeping that pid. The loader cannot set it itself: the pid is only known after fork.
pub const EXEC_WORKER: &str = "exec-worker";
/// Delay before the first restart of a worker that exited.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A worker that ran this long counts as healthy: its next restart is immediate again.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Starts workers: knows the command and which sockets each slot inherits.
#[derive(Debug)]
pub struct Spawner {
    /// The `sticky` executable, for the `exec-worker` shim.
    sticky: PathBuf,
    /// The worker program and its arguments.
    command: Vec<OsString>,
    /// Listening socket fds per slot, one per listen address, in the loader's fd table.
    fds: Vec<Vec<RawFd>>,
    /// `LISTEN_FDNAMES` value.
    names: String,
}

impl Spawner {
    /// A spawner for `groups` (each with one socket per slot). Without a `command` the workers
    /// run `sticky demo`.
    pub fn new(command: Option<&WorkerCommand>, groups: &[ListenerGroup]) -> io::Result<Self> {
        let sticky = std::env::current_exe()?;
        let command = match command {
            Some(WorkerCommand { program, args }) => {
                std::iter::once(program.into()).chain(args.iter().cloned()).collect()
            }
            None => vec![sticky.clone().into(), "demo".into()],
        };
        let slots = groups.first().map_or(0, |group| group.sockets.len());
        let fds = (0..slots)
            .map(|slot| groups.iter().map(|group| group.sockets[slot].as_raw_fd()).collect())
            .collect();
        let names = groups
            .iter()
            .map(|group| format!("sticky-{}", group.address.port()))
            .collect::<Vec<_>>()
            .join(":");
        Ok(Self { sticky, command, fds, names })
    }

    /// Number of worker slots.
    pub fn slots(&self) -> u32 {
        self.fds.len() as u32
    }

    /// Starts the worker for `slot` with that slot's sockets at fd 3 onwards.
    pub fn spawn(&self, slot: u32) -> io::Result<Child> {
        let fds = self.fds[slot as usize].clone();
        let loader = std::process::id();
        let mut command = Command::new(&self.sticky);
        command
            .arg(EXEC_WORKER)
            .arg("--")
            .args(&self.command)
            .env(LISTEN_FDS, fds.len().to_string())
            .env(LISTEN_FDNAMES, &self.names)
            .env(STICKY_WORKER, slot.to_string())
            .env(STICKY_WORKERS, self.slots().to_string())
            .env_remove(LISTEN_PID)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_PID")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls, without allocating.
        unsafe { command.pre_exec(move || prepare_child(loader, &fds)) };
        command.spawn()
    }
}

/// In the forked child: die with the loader, and move the slot's sockets to fd 3 onwards.
fn prepare_child(loader: u32, fds: &[RawFd]) -> io::Result<()> {
    let check = |ret: libc::c_int| if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) };
    // SAFETY: plain system calls on integers and on fds this process owns.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
        if libc::getppid() as u32 != loader {
            // The loader died before the line above took effect.
            return Err(io::Error::other("the loader exited"));
        }
        // First copy every socket above the target range, so no dup2 below overwrites a source.
        let above = LISTEN_FDS_START + fds.len() as RawFd;
        let mut copies = [0 as RawFd; MAX_LISTEN_ADDRESSES];
        for (copy, &fd) in copies.iter_mut().zip(fds) {
            *copy = check(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above))?;
        }
        for (target, &copy) in (LISTEN_FDS_START..).zip(&copies[..fds.len()]) {
            check(libc::dup2(copy, target))?;
            // dup2 onto an fd equal to its source keeps FD_CLOEXEC: clear it in every case.
            check(libc::fcntl(target, libc::F_SETFD, 0))?;
        }
    }
    Ok(())
}

/// Runs every slot's worker until SIGINT or SIGTERM, then stops them: SIGTERM to each worker's
/// process group, and SIGKILL to those still running after `grace`.
pub async fn run(spawner: Spawner, grace: Duration) -> io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (stop, stopping) = watch::channel(false);
    let spawner = Arc::new(spawner);
    let mut slots = JoinSet::new();
    for slot in 0..spawner.slots() {
        slots.spawn(supervise(spawner.clone(), slot, grace, stopping.clone()));
    }
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    info!("{name} received: stopping {} workers", spawner.slots());
    let _ = stop.send(true);
    slots.join_all().await;
    Ok(())
}

/// Keeps a worker running on `slot` until `stopping` turns true.
async fn supervise(
    spawner: Arc<Spawner>,
    slot: u32,
    grace: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match spawner.spawn(slot) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or_default();
                info!(slot, pid, "worker started");
                tokio::select! {
                    status = child.wait() => {
                        let status = status.map_or_else(|err| err.to_string(), |s| s.to_string());
                        warn!(slot, pid, %status, "worker exited");
                    }
                    () = stopped(&mut stopping) => {
                        stop_worker(&mut child, slot, grace).await;
                        return;
                    }
                }
            }
            Err(err) => warn!(slot, error = %err, "cannot start worker"),
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        info!(slot, delay_ms = backoff.as_millis() as u64, "restarting worker");
        tokio::select! {
            () = sleep(backoff) => {}
            () = stopped(&mut stopping) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves once the loader is stopping.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stopping.
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// SIGTERM to the worker's process group, then SIGKILL once `grace` has passed.
async fn stop_worker(child: &mut Child, slot: u32, grace: Duration) {
    let Some(pid) = child.id() else { return };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if timeout(grace, child.wait()).await.is_err() {
        warn!(slot, pid, "worker still running after the grace period: killing it");
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // The worker's own children may outlive it; its process group is theirs too.
    let _ = killpg(group, Signal::SIGKILL);
}

/// The body of `sticky exec-worker -- CMD...`: sets `LISTEN_PID` to this process and execs
/// `command`. Returns only if the exec failed.
pub fn exec_worker(command: &[OsString]) -> io::Error {
    let Some((program, args)) = command.split_first() else {
        return io::Error::other("no worker command given");
    };
    std::process::Command::new(program)
        .args(args)
        .env(LISTEN_PID, std::process::id().to_string())
        .exec()
}
