//! The control socket: a running `sticky run` answers `status`, `reload`, `scale` and `stop`
//! on a Unix socket (mode 0600), one JSON request and one JSON response per connection.

use std::{
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::sys::stat::Mode;
use thiserror::Error;

pub use super::protocol::{
    ClientAddressStatus, LoaderInfo, QuicGeneration, QuicStatus, ReloadOutcome, Request, Response,
    SlotState, SlotStatus, Status,
};
use super::{
    connections::{Connections, REQUEST_TIMEOUT, WhenFull},
    gate::Gate,
    loader::Loader,
};
use crate::{
    accept::AcceptBackoff,
    dir_safety::{self, Owners, Stat, Unsafe, Writers},
    limits::CONTROL_CONNECTIONS,
};

/// The longest request line the control socket reads.
const MAX_REQUEST: u64 = 64 * 1024;

/// Why the control socket could not be used.
#[derive(Debug, Error)]
pub enum ControlError {
    /// Nothing listens on the control socket.
    #[error(
        "no sticky is running with control socket {} (start one with `sticky run`, or give \
         the running one's --control path)",
        path.display()
    )]
    NotRunning {
        /// The control socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The control socket answers only root and the loader's own user.
    #[error("not allowed to use control socket {} (run this as root or as the loader's user)", path.display())]
    Denied {
        /// The control socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// Something other than a socket is at the control socket's path.
    #[error("{} exists and is not a socket: choose another --control path", .0.display())]
    NotASocket(PathBuf),
    /// Another loader owns the control socket.
    #[error("another sticky is running with control socket {}", .0.display())]
    InUse(PathBuf),
    /// Any other I/O error on the control socket.
    #[error("control socket {}: cannot {action}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The control socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The control socket's directory could be written by someone else than its owner.
    #[error("control socket directory {} {problem}: choose another --control path", dir.display())]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The loader closed the connection without answering (it refused the peer, or stopped).
    #[error("control socket {}: the loader closed the connection without an answer", .0.display())]
    NoAnswer(PathBuf),
    /// The peer sent something that is not a valid message.
    #[error("control socket {}: invalid message", path.display())]
    Invalid {
        /// The control socket path.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Binds the control socket at `path` with mode 0600 (under a umask, so it is never reachable
/// by others, even briefly), replacing a stale socket file but refusing to take over one a
/// running loader answers on, and refusing a directory that another user could write to. The
/// listener is non-blocking, ready for `tokio::net::UnixListener::from_std`.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io_error = |action| move |source| ControlError::Io { action, path: path.into(), source };
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_error("create its directory"))?;
        check_directory(dir)?;
    }
    if let Ok(metadata) = fs::symlink_metadata(path) {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.into()));
        }
        // Only a stale socket is replaced: any other file at the path is an error.
        if !metadata.file_type().is_socket() {
            return Err(ControlError::NotASocket(path.into()));
        }
        fs::remove_file(path).map_err(io_error("remove the stale socket"))?;
    }
    let umask = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(umask);
    let listener = bound.map_err(io_error("bind"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error("chmod"))?;
    listener.set_nonblocking(true).map_err(io_error("configure"))?;
    Ok(listener)
}

/// Refuses a control socket directory that is not owned by root or this loader's user, or
/// that its group or others may write to (they could replace the socket).
fn check_directory(dir: &Path) -> Result<(), ControlError> {
    let metadata = fs::metadata(dir).map_err(|source| ControlError::Io {
        action: "inspect its directory",
        path: dir.into(),
        source,
    })?;
    let us = nix::unistd::geteuid().as_raw();
    let stat = Stat::from(&metadata);
    let problem = match dir_safety::check(stat, us, Owners::RootOrUs, Writers::OwnerOnly) {
        Ok(()) => return Ok(()),
        Err(Unsafe::Owner { owner, .. }) => format!("is owned by uid {owner}, not root"),
        Err(Unsafe::GroupWritable { mode } | Unsafe::OthersWritable { mode }) => {
            format!("is writable by its group or others (mode {mode:o})")
        }
    };
    Err(ControlError::UnsafeDirectory { dir: dir.into(), problem })
}

/// Reads one request from a connection of the control socket: one line of at most
/// [`MAX_REQUEST`] bytes, within [`REQUEST_TIMEOUT`].
async fn read_request(stream: &mut tokio::net::UnixStream) -> io::Result<Request> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stream.take(MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
    if !line.ends_with('\n') {
        return Err(io::Error::other("the request is incomplete or too long"));
    }
    serde_json::from_str(&line).map_err(io::Error::other)
}

/// Whether the peer may use the control socket: root, or the loader's own user.
fn allowed(stream: &tokio::net::UnixStream) -> bool {
    let uid = stream.peer_cred().map(|credentials| credentials.uid());
    uid.is_ok_and(|uid| uid == 0 || uid == nix::unistd::geteuid().as_raw())
}

/// Writes the response to a connection of the control socket.
async fn write_response(
    stream: &mut tokio::net::UnixStream,
    response: &Response,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    stream.write_all(&encode(response)).await
}

/// Answers on a connection of the control socket held as a blocking stream (`sticky upgrade`'s,
/// which outlives an exec).
pub(crate) fn reply(mut stream: UnixStream, response: &Response) -> io::Result<()> {
    stream.write_all(&encode(response))
}

fn encode(response: &Response) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(response).expect("responses serialize");
    bytes.push(b'\n');
    bytes
}

/// The gate for the control socket's accept loop, at most [`CONTROL_CONNECTIONS`] answered
/// at once.
pub(crate) fn gate() -> Arc<Gate> {
    Gate::new(Connections::new(CONTROL_CONNECTIONS, WhenFull::Refuse))
}

/// Answers control requests on `listener` until the loader stops, one task per connection,
/// within `gate`'s bound and while it is open; only root and the loader's own user are
/// answered. `sticky upgrade` runs beside the connections, so that the gate can close while it
/// waits for the exec.
pub(crate) async fn serve(
    listener: tokio::net::UnixListener,
    loader: Arc<impl Loader>,
    gate: Arc<Gate>,
) {
    let mut backoff = AcceptBackoff::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = gate.hold() => continue,
            accepted = listener.accept() => accepted,
        };
        let Some((mut stream, _)) = backoff.accepted("control", accepted).await else {
            continue;
        };
        if !allowed(&stream) {
            continue;
        }
        let loader = loader.clone();
        gate.connections.serve(async move {
            let response = match read_request(&mut stream).await {
                Ok(Request::Upgrade) => {
                    tokio::spawn(loader.upgrade(stream));
                    return;
                }
                Ok(request) => loader.handle(request).await,
                Err(err) => Response::Error { message: format!("bad request: {err}") },
            };
            let _ = write_response(&mut stream, &response).await;
        });
    }
}

/// Sends `request` to the loader listening on `path` and returns its response.
pub fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let io_error = |action| move |source| ControlError::Io { action, path: path.into(), source };
    let mut stream = UnixStream::connect(path).map_err(|source| {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::PermissionDenied => ControlError::Denied { path, source },
            _ => ControlError::NotRunning { path, source },
        }
    })?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_error("send"))?;
    let mut answer = String::new();
    if BufReader::new(stream).read_line(&mut answer).map_err(io_error("receive"))? == 0 {
        return Err(ControlError::NoAnswer(path.into()));
    }
    serde_json::from_str(&answer)
        .map_err(|source| ControlError::Invalid { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_a_stable_json_form() {
        let scale = serde_json::to_string(&Request::Scale { workers: 5 }).unwrap();
        assert_eq!(scale, r#"{"command":"scale","workers":5}"#);
        let done = serde_json::to_string(&Response::Done { message: "ok".into() }).unwrap();
        assert_eq!(done, r#"{"result":"done","message":"ok"}"#);
    }

    #[test]
    fn no_loader_is_a_clear_error() {
        let path = std::env::temp_dir().join("sticky-no-such-control.sock");
        let err = request(&path, &Request::Status).unwrap_err();
        // The cause once, after the message (which does not repeat it).
        assert_eq!(
            crate::chain::Chain(&err).to_string(),
            format!(
                "no sticky is running with control socket {} (start one with `sticky run`, or \
                 give the running one's --control path): No such file or directory (os error 2)",
                path.display()
            )
        );
    }

    #[test]
    fn a_directory_others_could_write_to_or_own_is_refused_in_one_line() {
        let dir = std::env::temp_dir().join(format!("sticky-control-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
        let err = bind(&dir.join("control.sock")).unwrap_err();
        let expected = format!(
            "control socket directory {} is writable by its group or others (mode 775): choose \
             another --control path",
            dir.display()
        );
        assert_eq!(err.to_string(), expected);
        if nix::unistd::geteuid().is_root() {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let err = bind(&dir.join("control.sock")).unwrap_err();
            let owned = "is owned by uid 65534, not root: choose another --control path";
            assert!(err.to_string().ends_with(owned), "{err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
