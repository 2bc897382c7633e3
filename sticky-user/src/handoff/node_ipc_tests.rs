//! Node's framing, and a slot's deliveries against a fake node worker that reads the channel as
//! node does (one JSON line and its SCM_RIGHTS fd per handle).

use std::{
    io::{IoSliceMut, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::{fs::MetadataExt as _, net::UnixStream},
    },
    time::Duration,
};

use nix::{
    cmsg_space,
    sys::socket::{ControlMessageOwned, recvmsg},
};
use tokio::sync::Semaphore;

use super::*;

#[test]
fn a_handle_is_one_line_of_nodes_json() {
    let line = handle_message(2, None);
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["cmd"], "NODE_HANDLE");
    assert_eq!(value["type"], "net.Socket");
    assert_eq!(value["msg"], serde_json::json!({"cmd": "sticky:connection", "listener": 2}));
    let named = handle_message(0, Some("2001:db8::7".parse().unwrap()));
    let value: serde_json::Value = serde_json::from_str(&named).unwrap();
    assert_eq!(value["msg"]["client"], "2001:db8::7");
}

#[test]
fn answers_are_read_and_the_apps_own_messages_skipped() {
    assert_eq!(message(br#"{"cmd":"NODE_HANDLE_ACK"}"#), Some(Message::Reply(Reply::Ack)));
    assert_eq!(message(br#"{"cmd":"NODE_HANDLE_NACK"}"#), Some(Message::Reply(Reply::Nack)));
    assert_eq!(message(br#"{"cmd":"sticky:stopping"}"#), Some(Message::Stopping));
    assert_eq!(message(br#"{"hello":"world"}"#), None);
    assert_eq!(message(br#"{"cmd":"NODE_HANDLE_ACKX"}"#), None);
    assert_eq!(message(b"\"NODE_HANDLE_ACK\""), None);
    assert_eq!(message(b"not json"), None);
}

#[test]
fn lines_are_split_as_bytes_arrive_and_overlong_ones_skipped() {
    let mut lines = Lines::default();
    let mut seen = Vec::new();
    let mut push = |lines: &mut Lines, bytes: &[u8]| {
        lines.push(bytes, |line| seen.push(String::from_utf8_lossy(line).into_owned()))
    };
    push(&mut lines, b"{\"cmd\":\"NODE_HA");
    push(&mut lines, b"NDLE_ACK\"}\n{\"a\":1}\n{\"b\"");
    push(&mut lines, b":2}\n");
    push(&mut lines, &vec![b'x'; MAX_LINE + 10]);
    push(&mut lines, b"yyy\nlast\n");
    assert_eq!(seen, ["{\"cmd\":\"NODE_HANDLE_ACK\"}", "{\"a\":1}", "{\"b\":2}", "last"]);
}

/// A fake node worker on its end of a channel: receives `handles` handles, answering each
/// with `answer` (or nothing), then closes its end. Returns the fds it received, with the
/// lines that carried them.
fn fake_node(
    end: OwnedFd,
    handles: usize,
    answer: Option<&'static str>,
) -> std::thread::JoinHandle<Vec<(String, OwnedFd)>> {
    let mut stream = UnixStream::from(end);
    stream.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        let mut received = Vec::new();
        while received.len() < handles {
            let mut buffer = [0u8; 512];
            let mut space = cmsg_space!([RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let msg =
                recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
                    .unwrap();
            let fd = msg.cmsgs().unwrap().find_map(|cmsg| match cmsg {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            });
            let length = msg.bytes;
            let line = String::from_utf8_lossy(&buffer[..length]).into_owned();
            // SAFETY: the fd arrived with the message and is owned by no one else.
            received.push((line, unsafe { OwnedFd::from_raw_fd(fd.expect("an fd")) }));
            if let Some(answer) = answer {
                stream.write_all(answer.as_bytes()).unwrap();
            }
        }
        received
    })
}

/// A connection to hand over (any fd will do), and its inode to recognize it.
fn connection() -> (OwnedFd, u64) {
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let inode = file.metadata().unwrap().ino();
    (file.into(), inode)
}

fn inode(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd).unwrap().st_ino
}

const ACK: &str = "{\"cmd\":\"NODE_HANDLE_ACK\"}\n";

#[tokio::test]
async fn a_connection_unacknowledged_when_its_worker_dies_goes_to_the_next() {
    let pending = Arc::new(Semaphore::new(8));
    let slot = NodeSlot::default();
    let (first, first_end) = Channel::pair().unwrap();
    // It receives the first handle and dies without answering.
    let dying = fake_node(first_end, 1, None);
    slot.serve(first.clone());
    let (stream, expected) = connection();
    slot.queue(0, stream, 1, None, pending.clone().try_acquire_owned().unwrap());
    let got = tokio::task::spawn_blocking(move || dying.join().unwrap()).await.unwrap();
    assert_eq!(inode(&got[0].1), expected);
    tokio::time::timeout(Duration::from_secs(5), async {
        while first.open() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the dead worker's channel closes");
    assert_eq!(pending.available_permits(), 7, "the loader still holds the connection");
    let (second, second_end) = Channel::pair().unwrap();
    let next = fake_node(second_end, 2, Some(ACK));
    slot.serve(second);
    let (stream, other) = connection();
    slot.queue(0, stream, 0, None, pending.clone().try_acquire_owned().unwrap());
    let got = tokio::task::spawn_blocking(move || next.join().unwrap()).await.unwrap();
    assert_eq!(inode(&got[0].1), expected, "sent again, first");
    assert!(got[0].0.contains("\"listener\":1"), "{}", got[0].0);
    assert_eq!(inode(&got[1].1), other);
    assert!(got[1].0.contains("\"listener\":0"), "{}", got[1].0);
    tokio::time::timeout(Duration::from_secs(5), async {
        while pending.available_permits() < 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("acknowledged connections are let go");
}

#[tokio::test]
async fn a_stopping_worker_gets_nothing_new() {
    let slot = NodeSlot::default();
    let (channel, end) = Channel::pair().unwrap();
    let mut worker = UnixStream::from(end);
    worker.set_nonblocking(false).unwrap();
    worker.write_all(b"{\"cmd\":\"sticky:stopping\"}\n").unwrap();
    slot.serve(channel.clone());
    tokio::time::timeout(Duration::from_secs(5), async {
        while channel.open() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the channel closes to new connections");
    let pending = Arc::new(Semaphore::new(1));
    let (stream, _) = connection();
    slot.queue(0, stream, 0, None, pending.clone().try_acquire_owned().unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    worker.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut worker, &mut byte);
    assert!(read.is_err(), "the stopping worker was sent {read:?}");
    assert_eq!(pending.available_permits(), 0, "the connection waits for the next worker");
}
