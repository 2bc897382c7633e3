//! What another local user can do, tried for real: a python snippet run as that user.

use std::{ffi::OsStr, os::unix::process::CommandExt as _, path::Path, process::Command};

/// Another local user (not the workers').
pub const OTHER: u32 = 65533;

/// The system's python, which every user may run.
pub const PYTHON: &str = "/usr/bin/python3";
/// Sends `argv[2]` to the datagram socket at `argv[1]`.
pub const SEND: &str = "import socket, sys
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(sys.argv[2].encode(), sys.argv[1])";
/// Binds a datagram socket at `argv[1]`.
pub const BIND: &str = "import socket, sys
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind(sys.argv[1])";
/// Makes the directory `argv[1]`.
pub const MKDIR: &str = "import os, sys\nos.mkdir(sys.argv[1])";
/// Lists the directory `argv[1]`.
pub const LIST: &str = "import os, sys\nos.listdir(sys.argv[1])";

/// Runs the python `script` with `args` as user and group `uid`; its stderr if it failed.
pub fn as_user(uid: u32, script: &str, args: &[&OsStr]) -> Result<(), String> {
    let output = Command::new(PYTHON).arg("-c").arg(script).args(args).uid(uid).gid(uid).output();
    let output = output.expect("run python3");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() { Ok(()) } else { Err(stderr) }
}

/// Sends `message` to `socket` as user `uid`.
pub fn send_as(uid: u32, socket: &Path, message: &str) -> Result<(), String> {
    as_user(uid, SEND, &[socket.as_os_str(), OsStr::new(message)])
}
