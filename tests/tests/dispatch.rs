//! The kernel sends every connection from one client to the same worker.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    thread,
};

use sticky_tests::{
    Response, Sticky, client_v4, client_v6, get, imbalance, in_netns, loaded_programs,
    processes_in_netns, program_is_loaded,
};

const WORKERS: u32 = 4;
/// Enough clients that a fair hash keeps max/mean well under 1.10 (3.7 standard deviations).
const CLIENTS: u32 = 4096;
const CONNECTIONS_PER_CLIENT: usize = 3;
const CLIENT_THREADS: u32 = 4;

/// Makes `CONNECTIONS_PER_CLIENT` requests from each client (in parallel threads) and returns
/// the responses per client.
fn connect_all(clients: &[IpAddr], server: SocketAddr) -> HashMap<IpAddr, Vec<Response>> {
    thread::scope(|scope| {
        let chunk = clients.len().div_ceil(CLIENT_THREADS as usize);
        let threads: Vec<_> = clients
            .chunks(chunk)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut responses = HashMap::new();
                    for &client in chunk {
                        let all =
                            (0..CONNECTIONS_PER_CLIENT).map(|_| get(client, server)).collect();
                        responses.insert(client, all);
                    }
                    responses
                })
            })
            .collect();
        threads.into_iter().flat_map(|thread| thread.join().expect("client thread")).collect()
    })
}

/// Asserts every client stayed on one worker; returns the number of clients per worker.
fn clients_per_worker(responses: &HashMap<IpAddr, Vec<Response>>) -> Vec<usize> {
    let mut clients = vec![0; WORKERS as usize];
    for (client, all) in responses {
        let first = all[0].worker;
        assert!(all.iter().all(|r| r.worker == first), "{client} moved between workers: {all:?}");
        clients[first as usize] += 1;
    }
    clients
}

/// Connections each worker served.
fn connections_per_worker<'a>(responses: impl Iterator<Item = &'a Vec<Response>>) -> Vec<u64> {
    let mut connections = vec![0; WORKERS as usize];
    for response in responses.flatten() {
        connections[response.worker as usize] += 1;
    }
    connections
}

#[test]
fn ipv4_and_ipv6_clients_each_stay_on_one_worker_of_a_dual_stack_listener() {
    in_netns(|| {
        let sticky =
            Sticky::serving(&["--listen", "[::]:3000", "--workers", "4"], WORKERS as usize);
        let v4: Vec<IpAddr> = (0..CLIENTS).map(client_v4).collect();
        let v6: Vec<IpAddr> = (0..CLIENTS).map(client_v6).collect();
        let v4_responses = connect_all(&v4, "127.0.0.1:3000".parse().unwrap());
        let v6_responses = connect_all(&v6, "[::1]:3000".parse().unwrap());
        let status = sticky.status();
        let programs = loaded_programs(status.program_ids.clone());
        sticky.stop_cleanly();

        for (family, responses) in [("IPv4", &v4_responses), ("IPv6", &v6_responses)] {
            let clients = clients_per_worker(responses);
            let ratio = imbalance(&clients);
            println!("{family}: clients per worker {clients:?}, max/mean {ratio:.3}");
            assert!(ratio <= 1.10, "{family} clients per worker {clients:?}: max/mean {ratio:.3}");
        }
        // The program chose every connection: its counters match what each worker served.
        assert_eq!(status.program_ids.len(), 1, "{status:?}");
        let served = connections_per_worker(v4_responses.values().chain(v6_responses.values()));
        let selected: Vec<u64> = status.slots.iter().map(|s| s.connections).collect();
        assert_eq!(selected, served, "{status:?}");
        assert_eq!((status.fallback, status.passed, status.unreadable), (0, 0, 0));
        assert_eq!(served.iter().sum::<u64>(), u64::from(2 * CLIENTS) * 3);
        // Nothing is left running or attached.
        assert_eq!(processes_in_netns(), Vec::<u32>::new());
        assert!(programs.iter().all(|&id| !program_is_loaded(id)), "program left loaded");
    });
}

#[test]
fn separate_ipv4_and_ipv6_listeners_share_the_workers_and_the_mapping() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3001", "--listen", "[::1]:3001", "--workers", "4"];
        let sticky = Sticky::serving(&args, WORKERS as usize);
        assert_eq!(sticky.status().program_ids.len(), 2, "one program per listen address");
        let v4: Vec<IpAddr> = (0..300).map(client_v4).collect();
        let v6: Vec<IpAddr> = (0..300).map(client_v6).collect();
        let v4_responses = connect_all(&v4, "127.0.0.1:3001".parse().unwrap());
        let v6_responses = connect_all(&v6, "[::1]:3001".parse().unwrap());
        // Each worker serves both listeners from one process.
        let pids = |responses: &HashMap<IpAddr, Vec<Response>>| {
            let mut pids: Vec<(u32, u32)> =
                responses.values().flatten().map(|r| (r.worker, r.pid)).collect();
            pids.sort();
            pids.dedup();
            pids
        };
        assert_eq!(pids(&v4_responses), pids(&v6_responses));
        assert_eq!(pids(&v4_responses).len(), WORKERS as usize);
        let exit = sticky.stop_cleanly();
        clients_per_worker(&v4_responses);
        clients_per_worker(&v6_responses);
        let counters = exit.counters();
        assert_eq!(counters.len(), 2, "{}", exit.log);
        assert_eq!(counters[0].selected, connections_per_worker(v4_responses.values()));
        assert_eq!(counters[1].selected, connections_per_worker(v6_responses.values()));
        assert_eq!(processes_in_netns(), Vec::<u32>::new());
    });
}

#[test]
fn a_prefix_keeps_a_whole_subnet_on_one_worker() {
    in_netns(|| {
        let args =
            ["--listen", "[::]:3002", "--workers", "4", "--prefix-v4", "24", "--prefix-v6", "48"];
        let sticky = Sticky::serving(&args, WORKERS as usize);
        let v4 = "127.0.0.1:3002".parse().unwrap();
        let v6 = "[::1]:3002".parse().unwrap();
        let mut subnet_workers = Vec::new();
        for subnet in 0..64u8 {
            let workers: Vec<u32> = [1u8, 7, 100, 254]
                .iter()
                .map(|&host| get(IpAddr::from([127, 30, subnet, host]), v4).worker)
                .collect();
            assert!(workers.iter().all(|&w| w == workers[0]), "/24 {subnet} split: {workers:?}");
            subnet_workers.push(workers[0]);
        }
        for subnet in 0..64u16 {
            let workers: Vec<u32> = [0u16, 1, 0xbeef]
                .iter()
                .map(|&low| get(IpAddr::from([0xfd00, 7, subnet, low, 0, 0, 0, 1]), v6).worker)
                .collect();
            assert!(workers.iter().all(|&w| w == workers[0]), "/48 {subnet} split: {workers:?}");
            subnet_workers.push(workers[0]);
        }
        // Different subnets still spread over the workers.
        for worker in 0..WORKERS {
            assert!(subnet_workers.contains(&worker), "worker {worker} got no subnet");
        }
        sticky.stop_cleanly();
    });
}

#[test]
fn the_mapping_survives_a_restart_of_sticky() {
    in_netns(|| {
        let state = sticky_tests::StateDir::new();
        let clients: Vec<IpAddr> = (0..200).map(client_v4).collect();
        let server = "127.0.0.1:3003".parse().unwrap();
        let mut mappings = Vec::new();
        for _ in 0..2 {
            let mut sticky =
                Sticky::start_with_state(&state, &["--listen", "127.0.0.1:3003", "-w", "4"]);
            sticky.wait_until_serving(WORKERS as usize);
            mappings.push(clients.iter().map(|&c| get(c, server).worker).collect::<Vec<_>>());
            sticky.stop_cleanly();
        }
        assert_eq!(mappings[0], mappings[1]);
    });
}

#[test]
fn userspace_dispatch_maps_every_client_as_the_kernel_does() {
    in_netns(|| {
        let state = sticky_tests::StateDir::new();
        let mut clients: Vec<IpAddr> = (0..600).map(client_v4).collect();
        clients.extend((0..200).map(client_v6));
        let map = |dispatch: &str| {
            let args = ["--listen", "[::]:3004", "-w", "4", "--dispatch", dispatch];
            let mut sticky = Sticky::start_with_state(&state, &args);
            sticky.wait_until_serving(4);
            let server = |client: &IpAddr| -> SocketAddr {
                if client.is_ipv4() { "127.0.0.1:3004" } else { "[::1]:3004" }.parse().unwrap()
            };
            let workers: Vec<u32> = clients.iter().map(|c| get(*c, server(c)).worker).collect();
            for (client, worker) in clients.iter().zip(&workers).take(50) {
                assert_eq!(get(*client, server(client)).worker, *worker, "{client} moved");
            }
            sticky.stop_cleanly();
            workers
        };
        let kernel = map("kernel");
        let userspace = map("userspace");
        assert_eq!(kernel, userspace, "userspace dispatch maps clients differently");
        for worker in 0..4 {
            assert!(userspace.contains(&worker), "worker {worker} got no client");
        }
    });
}
