//! A UDP client for sticky's demo worker (which answers each datagram with
//! `worker: <slot> <payload>`), a steady load of numbered datagrams from many clients, and the
//! kernel's count of datagrams a full socket queue dropped.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn6, socket};

/// How long a client waits for an answer before counting its datagram unanswered (for now: a
/// late answer still counts).
const WAIT: Duration = Duration::from_secs(3);
/// The longest a load runs, whatever happens to the test.
const MAX_DURATION: Duration = Duration::from_secs(120);
/// The most datagrams one load thread sends.
const MAX_PER_THREAD: u64 = 200_000;

/// A socket bound to `source` (any port), with the answer timeout set. IPv6 sources may be
/// addresses of `fd00::/16`, routed to `lo` but not configured (`IPV6_FREEBIND`).
pub fn udp_client(source: IpAddr) -> UdpSocket {
    let socket = bind(source).unwrap_or_else(|err| panic!("bind a UDP client to {source}: {err}"));
    socket.set_read_timeout(Some(WAIT)).expect("SO_RCVTIMEO");
    socket
}

fn bind(source: IpAddr) -> io::Result<UdpSocket> {
    let IpAddr::V6(v6) = source else {
        return UdpSocket::bind(SocketAddr::new(source, 0));
    };
    let socket = socket(AddressFamily::Inet6, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a live local.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_FREEBIND,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    nix::sys::socket::bind(socket.as_raw_fd(), &SockaddrIn6::from(SocketAddrV6::new(v6, 0, 0, 0)))?;
    Ok(UdpSocket::from(socket))
}

/// The slot and payload of a demo worker's answer `worker: <slot> <payload>`.
pub fn parse_answer(answer: &[u8]) -> Option<(u32, String)> {
    let text = std::str::from_utf8(answer).ok()?.strip_prefix("worker: ")?;
    let (slot, payload) = text.split_once(' ')?;
    Some((slot.parse().ok()?, payload.to_owned()))
}

/// Sends `payload` from a new socket on `source` (so a new source port each time) to `server`
/// and returns the answering worker's slot; panics unless the echo comes back.
pub fn udp_slot(source: IpAddr, server: SocketAddr, payload: &str) -> u32 {
    let socket = udp_client(source);
    socket.send_to(payload.as_bytes(), server).expect("send a datagram");
    let mut buffer = [0u8; 2048];
    let (length, _) = socket
        .recv_from(&mut buffer)
        .unwrap_or_else(|err| panic!("no answer from {server} to {source}: {err}"));
    let (slot, echoed) = parse_answer(&buffer[..length]).expect("a demo worker's answer");
    assert_eq!(echoed, payload, "the answer does not echo the datagram");
    slot
}

/// Datagrams the kernel dropped on the sockets bound to local `port` because their queue was
/// full (the `drops` column of `/proc/net/udp` and `/proc/net/udp6`, of the calling thread's
/// network namespace).
pub fn kernel_drops(port: u16) -> u64 {
    ["udp", "udp6"]
        .iter()
        .flat_map(|file| {
            let path = format!("/proc/thread-self/net/{file}");
            let table = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>()
        })
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let drops: Option<u64> = fields.last()?.parse().ok();
            (u16::from_str_radix(local_port, 16).ok()? == port).then_some(drops)?
        })
        .sum()
}

/// Threads that each cycle through their share of the clients, one numbered datagram at a time
/// from the client's own socket, each answer awaited (at most [`WAIT`]) before the next.
pub struct UdpLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<ThreadReport>>,
}

/// A numbered datagram: its client, and when it was sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// The client (source address) it came from.
    pub client: IpAddr,
    /// When it was sent.
    pub at: Instant,
}

struct ThreadReport {
    sent: HashMap<u64, Sent>,
    answers: Vec<(u64, u32)>,
}

/// What a UDP load saw.
#[derive(Debug, Default)]
pub struct UdpReport {
    /// Every datagram sent, by sequence number.
    pub sent: HashMap<u64, Sent>,
    /// The slot that answered each answered datagram, by sequence number.
    pub answered: HashMap<u64, u32>,
}

impl UdpLoad {
    /// Starts `threads` threads sending to `server` from `clients`.
    pub fn start(server: SocketAddr, clients: &[IpAddr], threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let chunk = clients.len().div_ceil(threads);
        let threads = clients
            .chunks(chunk)
            .enumerate()
            .map(|(index, chunk)| {
                let (chunk, stop) = (chunk.to_vec(), stop.clone());
                // Sequence numbers unique across threads.
                let first = index as u64 * 1_000_000_000;
                thread::spawn(move || run_thread(server, &chunk, first, &stop))
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the load, collects the answers still on their way, and returns what it saw.
    pub fn stop(self) -> UdpReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = UdpReport::default();
        for thread in self.threads {
            let part = thread.join().expect("load thread");
            report.sent.extend(part.sent);
            report.answered.extend(part.answers);
        }
        report
    }
}

fn run_thread(
    server: SocketAddr,
    clients: &[IpAddr],
    first: u64,
    stop: &AtomicBool,
) -> ThreadReport {
    let sockets: Vec<UdpSocket> = clients.iter().map(|&c| udp_client(c)).collect();
    let deadline = Instant::now() + MAX_DURATION;
    let mut report = ThreadReport { sent: HashMap::new(), answers: Vec::new() };
    let mut buffer = [0u8; 2048];
    let mut receive = |socket: &UdpSocket, answers: &mut Vec<(u64, u32)>| -> io::Result<u64> {
        let (length, _) = socket.recv_from(&mut buffer)?;
        let (slot, payload) = parse_answer(&buffer[..length]).expect("a demo worker's answer");
        let sequence: u64 = payload.parse().expect("a sequence number");
        answers.push((sequence, slot));
        Ok(sequence)
    };
    for (sequence, index) in (first..first + MAX_PER_THREAD).zip((0..clients.len()).cycle()) {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let socket = &sockets[index];
        report.sent.insert(sequence, Sent { client: clients[index], at: Instant::now() });
        socket.send_to(sequence.to_string().as_bytes(), server).expect("send a datagram");
        // Answers to earlier datagrams of this client that came late are taken on the way.
        while let Ok(answered) = receive(socket, &mut report.answers) {
            if answered == sequence {
                break;
            }
        }
    }
    // Late answers: give them one more wait, then take what has arrived.
    thread::sleep(Duration::from_millis(500));
    for socket in &sockets {
        socket.set_nonblocking(true).expect("O_NONBLOCK");
        while receive(socket, &mut report.answers).is_ok() {}
    }
    report
}

impl UdpReport {
    /// The datagrams that got no answer.
    pub fn unanswered(&self) -> Vec<(u64, Sent)> {
        let mut missing: Vec<(u64, Sent)> = (self.sent.iter())
            .filter(|(sequence, _)| !self.answered.contains_key(sequence))
            .map(|(&sequence, &sent)| (sequence, sent))
            .collect();
        missing.sort_by_key(|(sequence, _)| *sequence);
        missing
    }

    /// The slots that answered each client, in the order they were sent.
    pub fn slots_by_client(&self) -> HashMap<IpAddr, Vec<u32>> {
        let mut answered: Vec<(&u64, &u32)> = self.answered.iter().collect();
        answered.sort();
        let mut slots: HashMap<IpAddr, Vec<u32>> = HashMap::new();
        for (sequence, &slot) in answered {
            slots.entry(self.sent[sequence].client).or_default().push(slot);
        }
        slots
    }

    /// Panics unless every client was answered by one slot; returns the slot of each.
    pub fn assert_no_client_moved(&self, what: &str) -> HashMap<IpAddr, u32> {
        (self.slots_by_client().into_iter())
            .map(|(client, slots)| {
                assert!(slots.iter().all(|&s| s == slots[0]), "{what}: {client} moved: {slots:?}");
                (client, slots[0])
            })
            .collect()
    }

    /// Answered datagrams sent during `event` (its start and end): proves the load went on
    /// through it.
    pub fn sent_within(&self, event: (Instant, Instant)) -> usize {
        let within = |sent: &Sent| event.0 <= sent.at && sent.at <= event.1;
        (self.answered.keys()).filter(|sequence| within(&self.sent[sequence])).count()
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let unanswered = self.unanswered();
        let sample: Vec<u64> = unanswered.iter().take(5).map(|(sequence, _)| *sequence).collect();
        format!(
            "{} datagrams sent, {} answered, {} unanswered {sample:?}",
            self.sent.len(),
            self.answered.len(),
            unanswered.len()
        )
    }
}
