//! UDP (`--listen udp://ADDR:PORT`): every datagram of a client goes to one worker, whatever its
//! source port, over IPv4, IPv6 and a dual-stack address; a client reaches the same slot over
//! TCP and UDP; scaling moves only the clients it must; what a worker's connect() on its
//! socket does (why docs/udp.md forbids it).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{FromRawFd as _, OwnedFd},
};

use sticky_tests::{
    Sticky, UdpLoad, client_v4, client_v6, get, in_netns, kernel_drops, parse_answer, udp_client,
    udp_slot,
};
use sticky_user::control::{Request, Response};

const WORKERS: usize = 4;
const DATAGRAMS_PER_CLIENT: usize = 3;

/// Where a client of the family of `client` sends: 127.0.0.1 or ::1, on `port`.
fn server_for(client: IpAddr, port: u16) -> SocketAddr {
    let host: IpAddr =
        if client.is_ipv4() { [127, 0, 0, 1].into() } else { "::1".parse().unwrap() };
    SocketAddr::new(host, port)
}

/// Each client's slot, from `DATAGRAMS_PER_CLIENT` datagrams, each from a new socket (a new
/// source port); panics if a client's datagrams reach two slots.
fn slots(clients: &[IpAddr], port: u16) -> HashMap<IpAddr, u32> {
    sticky_tests::for_each_client(clients, 4, |client| {
        let seen: Vec<u32> = (0..DATAGRAMS_PER_CLIENT)
            .map(|i| udp_slot(client, server_for(client, port), &format!("{client} {i}")))
            .collect();
        assert!(seen.iter().all(|&s| s == seen[0]), "{client} reached slots {seen:?}");
        seen[0]
    })
}

/// Starts sticky on the UDP address `listen`, sends from `clients`, and checks that each
/// stayed on one slot, every slot answered some, and the program chose every datagram.
fn each_client_on_one_worker(listen: &str, clients: &[IpAddr]) {
    in_netns(|| {
        let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
        let sticky = Sticky::serving(&["--listen", listen, "-w", "4"], WORKERS);
        let slots = slots(clients, port);
        let mut per_slot = [0usize; WORKERS];
        slots.values().for_each(|&slot| per_slot[slot as usize] += 1);
        println!("{listen}: clients per slot {per_slot:?}");
        assert!(per_slot.iter().all(|&n| n > 0), "a worker got no client: {per_slot:?}");
        let status = sticky.status();
        let selected: u64 = status.slots.iter().map(|s| s.connections).sum();
        let sent = (clients.len() * DATAGRAMS_PER_CLIENT) as u64;
        assert_eq!(selected, sent, "the program did not choose every datagram: {status:?}");
        assert_eq!((status.fallback, status.passed, status.unreadable), (0, 0, 0));
        assert_eq!(kernel_drops(port), 0);
        sticky.stop_cleanly();
    });
}

#[test]
fn ipv4_clients_each_stay_on_one_worker_whatever_their_source_port() {
    let clients: Vec<IpAddr> = (0..1000).map(client_v4).collect();
    each_client_on_one_worker("udp://127.0.0.1:5000", &clients);
}

#[test]
fn ipv6_clients_each_stay_on_one_worker_whatever_their_source_port() {
    let clients: Vec<IpAddr> = (0..1000).map(client_v6).collect();
    each_client_on_one_worker("udp://[::1]:5001", &clients);
}

#[test]
fn ipv4_and_ipv6_clients_each_stay_on_one_worker_of_a_dual_stack_address() {
    let mut clients: Vec<IpAddr> = (0..500).map(client_v4).collect();
    clients.extend((0..500).map(client_v6));
    each_client_on_one_worker("udp://[::]:5002", &clients);
}

#[test]
fn a_client_reaches_the_same_slot_over_tcp_and_udp() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:5003", "--listen", "udp://127.0.0.1:5003", "-w", "4"];
        let sticky = Sticky::serving(&args, WORKERS);
        let clients: Vec<IpAddr> = (0..300).map(client_v4).collect();
        let tcp = sticky_tests::for_each_client(&clients, 4, |client| {
            get(client, "127.0.0.1:5003".parse().unwrap()).worker
        });
        let udp = slots(&clients, 5003);
        assert_eq!(tcp, udp, "a client's TCP and UDP slots differ");
        sticky.stop_cleanly();
    });
}

fn done(response: Response) -> String {
    match response {
        Response::Done { message } => message,
        other => panic!("expected done, got {other:?}"),
    }
}

#[test]
fn scaling_up_and_down_moves_only_the_udp_clients_it_must() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "udp://127.0.0.1:5004", "-w", "4"], WORKERS);
        let server: SocketAddr = "127.0.0.1:5004".parse().unwrap();
        let probes: Vec<IpAddr> = (10_000..12_000).map(client_v4).collect();
        let mapping = || -> HashMap<IpAddr, u32> {
            sticky_tests::for_each_client(&probes, 4, |c| udp_slot(c, server, "probe"))
        };
        let load = UdpLoad::start(server, &sticky_tests::load_clients(), 4);
        let four = mapping();

        assert_eq!(done(sticky.control(Request::Scale { workers: 5 })), "5 workers");
        let five = mapping();
        let moved: Vec<_> = probes.iter().filter(|c| four[c] != five[c]).collect();
        assert!(moved.iter().all(|c| five[c] == 4), "a client moved between old workers");
        let fraction = moved.len() as f64 / probes.len() as f64;
        println!("4→5: {fraction:.3} of clients moved");
        assert!((0.85 / 5.0..=1.15 / 5.0).contains(&fraction), "{fraction} moved");

        assert_eq!(done(sticky.control(Request::Scale { workers: 4 })), "4 workers");
        let back = mapping();
        assert_eq!(back, four, "scaling back restores the first mapping");

        let report = load.stop();
        let drops = kernel_drops(5004);
        println!("scaling 4 → 5 → 4: {}; {drops} dropped by the kernel", report.summary());
        // The load's clients: only those of the new slot 4 moved (there and back).
        for (client, slots) in report.slots_by_client() {
            let mut distinct = slots.clone();
            distinct.dedup();
            assert!(distinct.len() == 1 || distinct.contains(&4), "{client} moved: {slots:?}");
        }
        assert!(report.answered.len() > 1000, "too little load: {}", report.summary());
        // A datagram queued on slot 4's socket when it closed is lost with it (UDP has no
        // migration): at most one per load thread, each of a client of slot 4. Everything
        // else is answered.
        let lost = report.unanswered();
        assert!(lost.len() as u64 <= drops + 4, "{}", report.summary());
        let by_client = report.slots_by_client();
        for (sequence, sent) in &lost {
            let slots = by_client.get(&sent.client).cloned().unwrap_or_default();
            assert!(slots.is_empty() || slots.contains(&4), "{sequence} {sent:?} lost: {slots:?}");
        }
        sticky.stop_cleanly();
    });
}

/// A duplicate of file descriptor `fd` of process `pid` (pidfd_getfd, Linux 5.6+).
fn steal_fd(pid: u32, fd: i32) -> OwnedFd {
    // SAFETY: plain system calls; each result is checked before use.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let stolen =
            libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0);
        assert!(stolen >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(stolen as i32)
    }
}

/// The slot answering a datagram from `socket`.
fn slot_from(socket: &UdpSocket, server: SocketAddr) -> u32 {
    socket.send_to(b"x", server).unwrap();
    let mut buffer = [0u8; 256];
    let (length, _) = socket.recv_from(&mut buffer).expect("an answer");
    parse_answer(&buffer[..length]).expect("a demo answer").0
}

#[test]
fn a_connected_socket_takes_its_peers_datagrams_and_leaves_the_group_for_good() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "udp://127.0.0.1:5005", "-w", "2"], 2);
        let server: SocketAddr = "127.0.0.1:5005".parse().unwrap();
        let clients: Vec<IpAddr> = (0..200).map(client_v4).collect();
        let before = slots(&clients, 5005);
        // A peer of slot 1, on a fixed port.
        let peer = clients.iter().copied().find(|c| before[c] == 1).expect("a client of slot 1");
        let peer_socket = udp_client(peer);
        assert_eq!(slot_from(&peer_socket, server), 1);
        // What a worker's connect() on its inherited socket does: slot 0's socket (the worker's
        // fd 3, which the loader and every later worker of slot 0 share) connected to the peer.
        let worker = sticky.status().slots[0].pid.expect("slot 0's worker");
        let socket = UdpSocket::from(steal_fd(worker, 3));
        assert_eq!(socket.local_addr().unwrap(), server, "fd 3 is not the UDP socket");
        socket.connect(peer_socket.local_addr().unwrap()).unwrap();
        drop(socket);
        // Its peer's datagrams all go to the connected socket, whatever their slot.
        for _ in 0..20 {
            assert_eq!(slot_from(&peer_socket, server), 0, "the connected socket took nothing");
        }
        // And the kernel took the socket out of the reuseport group (and so out of the
        // program's socket array): slot 0's other clients fall back to slot 1.
        let fallback_before = sticky.status().fallback;
        let after = slots(&clients, 5005);
        let of_slot_0 = clients.iter().filter(|c| before[c] == 0).count() as u64;
        assert!(of_slot_0 > 0);
        for client in &clients {
            assert_eq!(after[client], 1, "{client}: slot 0's socket still took its datagrams");
        }
        let fallback = sticky.status().fallback - fallback_before;
        assert_eq!(fallback, of_slot_0 * 3, "slot 0's clients did not fall back");
        println!("connected: {of_slot_0} clients of slot 0 fell back to slot 1");
        // It outlives the worker that made it: slot 0's next worker gets the same socket.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        sticky_tests::eventually("slot 0 has a new worker", || {
            let slot = &sticky.status().slots[0];
            slot.pid.is_some_and(|pid| pid != worker) && slot.ready
        });
        assert_eq!(slot_from(&peer_socket, server), 0, "the connect() did not outlive its worker");
        // Nor does its restart put the socket back in the group: sticky does not notice.
        assert_eq!(slots(&clients, 5005), after, "slot 0's restart changed the mapping");
        assert!(sticky.status().slots[0].in_table);
        sticky.stop_cleanly();
    });
}

#[test]
fn udp_tcp_and_handoff_sockets_are_named_so_a_worker_finds_each() {
    in_netns(|| {
        let args = [
            &["--listen", "udp://[::]:5006", "--listen", "127.0.0.1:5006", "-w", "2"][..],
            &["--trusted-proxy", "127.0.0.1", "--client-address", "proxy-protocol"],
        ]
        .concat();
        let sticky = Sticky::serving(&args, 2);
        let worker = sticky.status().slots[0].pid.expect("a worker");
        let environ = sticky_tests::privileges::environ_of(worker);
        let variable = |name: &str| {
            let prefix = format!("{name}=");
            environ.split('\0').find_map(|v| v.strip_prefix(&prefix).map(str::to_owned))
        };
        // One colon-separated name per fd: a name holding a colon would shift the rest.
        assert_eq!(variable("LISTEN_FDS").as_deref(), Some("3"));
        assert_eq!(
            variable("LISTEN_FDNAMES").as_deref(),
            Some("udp-5006:sticky-5006:sticky-handoff")
        );
        // And the worker found its handoff socket: a proxied client is served by its slot.
        let (client, server) = (client_v4(7), "127.0.0.1:5006".parse().unwrap());
        let direct = get(client, server).worker;
        let proxy = IpAddr::from([127, 0, 0, 1]);
        let header = sticky_tests::proxy_v1(client, server);
        let proxied = sticky_tests::request_after(proxy, server, &header).expect("proxied");
        assert_eq!(proxied.worker, direct);
        assert_eq!(udp_slot(client, server_for(client, 5006), "x"), direct);
        sticky.stop_cleanly();
    });
}
