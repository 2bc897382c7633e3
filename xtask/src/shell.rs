//! Running commands, loudly: every command is printed before it runs.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::{
        prctl,
        signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction},
    },
    unistd::{Pid, getppid},
};

/// Prints an xtask progress line.
pub fn say(message: &str) {
    eprintln!("xtask: {message}");
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").into()
}

/// `cargo`, the one running this xtask, in the workspace root.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program`, through `sudo` unless this process is root already.
pub fn as_root(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg("--preserve-env").arg(program);
        command
    }
}

/// The command line of `command`, for messages.
pub fn display(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints and runs `command`, failing unless it succeeds.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let line = display(command);
    say(&format!("$ {line}"));
    let status = command.status().with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `command` quietly and returns its stdout, or `None` if it cannot run or fails.
pub fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The child that [`run_in_foreground`] passes signals on to (0: none yet).
static FOREGROUND_CHILD: AtomicI32 = AtomicI32::new(0);

/// Signal handler: passes the signal on to the foreground child.
extern "C" fn pass_on(signal: std::ffi::c_int) {
    let child = FOREGROUND_CHILD.load(Ordering::Relaxed);
    if child > 0
        && let Ok(signal) = Signal::try_from(signal)
    {
        let _ = kill(Pid::from_raw(child), signal);
    }
}

/// Prints and runs `command` in this process's place, failing unless it succeeds: SIGINT,
/// SIGTERM and SIGHUP sent to this process are passed on to it, and this process waits for it.
/// If cargo (this process's parent) dies first, this process gets SIGTERM and passes it on.
pub fn run_in_foreground(command: &mut Command) -> anyhow::Result<()> {
    let parent = getppid();
    prctl::set_pdeathsig(Signal::SIGTERM).context("cannot set the parent-death signal")?;
    if getppid() != parent {
        bail!("cargo exited before {} started", display(command));
    }
    let action = SigAction::new(SigHandler::Handler(pass_on), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only reads an atomic and calls kill(2), both async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("cannot install a signal handler")?;
    }
    let line = display(command);
    say(&format!("$ {line}"));
    let mut child = command.spawn().with_context(|| format!("cannot start `{line}`"))?;
    FOREGROUND_CHILD.store(child.id() as i32, Ordering::Relaxed);
    let status = child.wait().with_context(|| format!("cannot wait for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}
