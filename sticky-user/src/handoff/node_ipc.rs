//! Node workers (`--handoff node`): node cannot read the handoff socket (it has no SCM_RIGHTS
//! of its own), so each node worker process gets Node's own IPC channel, a fresh AF_UNIX
//! SOCK_STREAM pair whose end it inherits as `NODE_CHANNEL_FD`, and each connection goes over
//! it as node's parent sends a `net.Socket`: one JSON line
//! `{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"cmd":"sticky:connection","listener":N}}`
//! with the connection's fd as SCM_RIGHTS on the same `sendmsg`. Node answers each with a line
//! `{"cmd":"NODE_HANDLE_ACK"}` (`NODE_HANDLE_NACK` if the fd did not arrive), and, as node's
//! own parent does, the next handle waits for it.
//!
//! Per slot ([`NodeSlot`]) connections queue (within the accept loop's `HANDOFF_PENDING`) and
//! go, one at a time, to the slot's current worker once the supervisor has seen it ready (its
//! `'message'` handler is attached by then). The loader keeps its copy of a connection until
//! node acknowledges it: one whose channel closes first (the worker died) goes to the next
//! worker, so a restart loses none. A worker that says `{"cmd":"sticky:stopping"}` (the
//! sticky-session package on SIGTERM) gets nothing new. Each slot has its own task: a slow
//! worker holds up only its own clients.

use std::{
    io::{self, IoSlice},
    net::IpAddr,
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use tokio::{
    io::unix::AsyncFd,
    sync::{OwnedSemaphorePermit, mpsc, watch},
};
use tracing::{debug, warn};

use super::pairs::register;
use crate::sync::lock;

/// The longest line read from a worker's channel; longer ones (the app's own messages) are
/// skipped.
const MAX_LINE: usize = 64 * 1024;
/// How often one connection is sent again after node says its fd did not arrive.
const MAX_NACKS: u32 = 3;

/// A connection waiting for its slot's worker: the loader's copy, kept until node has it.
struct Pending {
    stream: OwnedFd,
    listener: u8,
    /// The client's address a trusted proxy's header named, if any.
    client: Option<IpAddr>,
    /// Its room among the connections the loader holds.
    _permit: OwnedSemaphorePermit,
}

/// One slot's queue and its current worker's channel.
pub struct NodeSlot {
    queue: mpsc::UnboundedSender<Pending>,
    /// The receiving end until the slot's task takes it (at the first connection: the task
    /// needs the runtime, which the slot may predate).
    waiting: Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    current: watch::Sender<Option<Arc<Channel>>>,
}

impl Default for NodeSlot {
    fn default() -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        Self { queue, waiting: Mutex::new(Some(waiting)), current: watch::Sender::new(None) }
    }
}

impl NodeSlot {
    /// Queues `stream` (accepted on listen address `listener`, for `client` if a trusted
    /// proxy's header named one) for slot `slot`'s worker.
    pub(crate) fn queue(
        &self,
        slot: usize,
        stream: OwnedFd,
        listener: u8,
        client: Option<IpAddr>,
        permit: OwnedSemaphorePermit,
    ) {
        if let Some(queue) = lock(&self.waiting).take() {
            tokio::spawn(deliver_all(slot, queue, self.current.subscribe()));
        }
        // The task ends only with the slot (it holds `current`'s receiver, the slot the sender).
        let _ = self.queue.send(Pending { stream, listener, client, _permit: permit });
    }

    /// From now on the slot's connections go to `channel`, its ready worker's.
    pub fn serve(&self, channel: Arc<Channel>) {
        self.current.send_replace(Some(channel));
    }
}

/// Delivers slot `slot`'s connections in order, each to the current open channel, until the
/// slot is removed (what is still queued then closes).
async fn deliver_all(
    slot: usize,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    mut current: watch::Receiver<Option<Arc<Channel>>>,
) {
    while let Some(pending) = queue.recv().await {
        let mut refused = 0;
        loop {
            let open = |channel: &Option<Arc<Channel>>| channel.as_ref().is_some_and(|c| c.open());
            let Ok(channel) = current.wait_for(open).await.map(|c| c.clone()) else { return };
            let Some(channel) = channel else { continue };
            let message = handle_message(pending.listener, pending.client);
            match channel.deliver(pending.stream.as_raw_fd(), &message).await {
                Ok(Reply::Ack) => break,
                Ok(Reply::Nack) if refused < MAX_NACKS => refused += 1,
                Ok(Reply::Nack) => {
                    warn!(slot, "node did not receive a connection's fd {MAX_NACKS} times: closed");
                    break;
                }
                Err(err) => {
                    debug!(slot, error = %err, "a worker's channel closed: the next one gets it");
                    channel.close();
                }
            }
        }
    }
}

/// The loader's end of one node worker's IPC channel.
pub struct Channel {
    end: AsyncFd<OwnedFd>,
    /// The worker's answers to handles, read by the channel's reader task.
    replies: tokio::sync::Mutex<mpsc::UnboundedReceiver<Reply>>,
    /// False once the worker is gone or stopping: nothing new is sent then.
    open: AtomicBool,
}

impl Channel {
    /// A new worker's channel: the loader's end (read by a task of its own until the worker
    /// closes it) and the end the worker inherits (close-on-exec; the spawner moves it).
    pub fn pair() -> io::Result<(Arc<Channel>, OwnedFd)> {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let (loader, worker) = socketpair(AddressFamily::Unix, SockType::Stream, None, flags)?;
        let (answers, replies) = mpsc::unbounded_channel();
        let channel = Arc::new(Channel {
            end: register(loader)?,
            replies: tokio::sync::Mutex::new(replies),
            open: AtomicBool::new(true),
        });
        tokio::spawn(read_replies(channel.clone(), answers));
        Ok((channel, worker))
    }

    /// Whether the worker may be sent connections.
    pub fn open(&self) -> bool {
        self.open.load(Relaxed)
    }

    /// Sends nothing more to it.
    pub fn close(&self) {
        self.open.store(false, Relaxed);
    }

    /// Sends connection `fd` and waits for node's answer; an error once the channel fails or
    /// closes first.
    async fn deliver(&self, fd: RawFd, message: &str) -> io::Result<Reply> {
        let mut replies = self.replies.lock().await;
        let mut sent = 0;
        while sent < message.len() {
            let mut ready = self.end.writable().await?;
            // The fd goes with the first byte; a short write sends the rest without it.
            let attempt = ready.try_io(|end| {
                let fds = [fd];
                let rights = [ControlMessage::ScmRights(&fds)];
                let cmsgs: &[ControlMessage] = if sent == 0 { &rights } else { &[] };
                let iov = [IoSlice::new(&message.as_bytes()[sent..])];
                sendmsg::<()>(end.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            match attempt {
                Ok(result) => sent += result?,
                Err(_would_block) => continue,
            }
        }
        replies.recv().await.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
}

/// Reads `channel` line by line until it closes: answers to handles go to `answers`, a
/// stopping worker closes the channel; anything else (the app's own messages) is skipped.
async fn read_replies(channel: Arc<Channel>, answers: mpsc::UnboundedSender<Reply>) {
    let mut lines = Lines::default();
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let Ok(mut ready) = channel.end.readable().await else { break };
        let read = ready
            .try_io(|end| nix::unistd::read(end.get_ref(), &mut buffer).map_err(io::Error::from));
        let length = match read {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(length)) => length,
            Err(_would_block) => continue,
        };
        lines.push(&buffer[..length], |line| match message(line) {
            Some(Message::Reply(reply)) => drop(answers.send(reply)),
            Some(Message::Stopping) => channel.close(),
            None => {}
        });
    }
    channel.close();
}

/// Node's answer to a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// `NODE_HANDLE_ACK`: node has the fd.
    Ack,
    /// `NODE_HANDLE_NACK`: the fd did not arrive; send it again.
    Nack,
}

/// What sticky reads from a worker's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Reply(Reply),
    /// The worker stops (SIGTERM): send it nothing more.
    Stopping,
}

/// The line that sends a connection from listen address `listener` (for `client`, if a
/// trusted proxy named one), newline included.
fn handle_message(listener: u8, client: Option<IpAddr>) -> String {
    let client = client.map_or(String::new(), |client| format!(",\"client\":\"{client}\""));
    format!(
        "{{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\
         \"msg\":{{\"cmd\":\"sticky:connection\",\"listener\":{listener}{client}}}}}\n"
    )
}

/// What one JSON line from node means to sticky, if anything.
fn message(line: &[u8]) -> Option<Message> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    match value.get("cmd")?.as_str()? {
        "NODE_HANDLE_ACK" => Some(Message::Reply(Reply::Ack)),
        "NODE_HANDLE_NACK" => Some(Message::Reply(Reply::Nack)),
        "sticky:stopping" => Some(Message::Stopping),
        _ => None,
    }
}

/// Node's JSON serialization: one message per `\n`-terminated line, split as bytes arrive.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
    /// Inside a line longer than [`MAX_LINE`], skipped up to its end.
    skipping: bool,
}

impl Lines {
    /// Calls `each` with every line `bytes` completes, without its newline.
    fn push(&mut self, mut bytes: &[u8], mut each: impl FnMut(&[u8])) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            if !self.skipping {
                self.partial.extend_from_slice(&bytes[..end]);
                each(&self.partial);
            }
            self.partial.clear();
            self.skipping = false;
            bytes = &bytes[end + 1..];
        }
        if !self.skipping {
            self.partial.extend_from_slice(bytes);
            if self.partial.len() > MAX_LINE {
                self.partial.clear();
                self.skipping = true;
            }
        }
    }
}

#[cfg(test)]
#[path = "node_ipc_tests.rs"]
mod tests;
