//! Running as a system service: unit file, sd_notify, worker identity, configuration files,
//! status and metrics, install and uninstall.

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use sticky_tests::{StateDir, Sticky, client_v4, get, in_netns, sticky_bin};
use sticky_user::control::Request;

fn sticky(args: &[&str]) -> Output {
    Command::new(sticky_bin()).args(args).output().expect("run sticky")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file below `root`.
fn files_below(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                found.push(entry.path().display().to_string());
            }
        }
    }
    found
}

#[test]
fn install_writes_a_unit_systemd_accepts_and_uninstall_removes_everything() {
    let root = StateDir::new();
    let root_arg = root.0.to_str().unwrap();
    let bin = sticky_bin();
    let install = ["install", "web", "--root", root_arg, "--bin", bin.to_str().unwrap()];
    let options = ["--user", "nobody", "--listen", "[::]:80", "-w", "4", "--", "sh", "-c", "true"];

    let dry = sticky(&[&install[..], &["--dry-run"], &options[..]].concat());
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let printed = text(&dry.stdout);
    assert!(printed.contains("Type=notify") && printed.contains("user = \"nobody\""), "{printed}");
    assert!(files_below(&root.0).is_empty(), "--dry-run wrote files");

    let installed = sticky(&[&install[..], &options[..]].concat());
    assert!(installed.status.success(), "{}", text(&installed.stderr));
    let unit = root.0.join("etc/systemd/system/sticky-web.service");
    let config = root.0.join("etc/sticky/web.toml");
    let unit_text = fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "ExecReload=",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_SETUID CAP_SETGID CAP_KILL CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "SystemCallArchitectures=native",
    ] {
        assert!(unit_text.contains(line), "the unit lacks {line}:\n{unit_text}");
    }
    let verify = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect(
        "systemd-analyze is missing: `cargo xtask test` installs it (Debian package systemd)",
    );
    assert!(verify.status.success(), "systemd-analyze verify: {}", text(&verify.stderr));
    let check = sticky(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "the written configuration fails check: {}",
        text(&check.stderr)
    );

    let again = sticky(&[&install[..], &options[..]].concat());
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("exists already"), "{}", text(&again.stderr));

    let uninstall = sticky(&["uninstall", "web", "--root", root_arg]);
    assert!(uninstall.status.success(), "{}", text(&uninstall.stderr));
    assert_eq!(files_below(&root.0), Vec::<String>::new(), "uninstall left files");
    let twice = sticky(&["uninstall", "web", "--root", root_arg]);
    assert_eq!(twice.status.code(), Some(1), "a second uninstall succeeded");
    assert!(text(&twice.stderr).contains("sticky-web.service is not installed"));
}

#[test]
fn configuration_errors_name_line_column_and_the_example_passes() {
    let dir = StateDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    let check_with = |name: &str, contents: &str, flags: &[&str]| {
        let path = dir.0.join(name);
        fs::write(&path, contents).unwrap();
        let config = ["check", "--allow-root-workers", "--config", path.to_str().unwrap()];
        let output = sticky(&[&config[..], flags].concat());
        (output.status.success(), text(&output.stdout), text(&output.stderr), path)
    };
    let check = |name: &str, contents: &str| check_with(name, contents, &[]);
    let (ok, _, stderr, path) =
        check("syntax.toml", "workers = 4\nlisten = [\"[::]:80\"\nuser = 1\n");
    assert!(!ok);
    let expected = format!("sticky: error: {}:3:1: missing comma", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    let (ok, _, stderr, path) = check("unknown.toml", "workers = 4\nworker = 5\n");
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}:2:1: unknown key `worker`: did you mean `workers`?",
            path.display()
        )),
        "{stderr}"
    );
    let (ok, _, stderr, path) = check("type.toml", "# comment\nprefix-v4 = \"wide\"\n");
    assert!(!ok);
    assert!(stderr.contains(&format!("{}:2:13:", path.display())), "{stderr}");
    let (ok, _, stderr, _) = check("range.toml", "prefix-v4 = 40\n");
    assert!(!ok && stderr.contains("--prefix-v4 must be between 0 and 32, got 40"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // The file's value, and a flag that overrides it.
    let (ok, stdout, stderr, _) = check("override.toml", "workers = 3\n");
    assert!(ok && stdout.contains("3 workers"), "{stdout}{stderr}");
    let (ok, stdout, stderr, _) = check_with("override.toml", "workers = 3\n", &["--workers", "5"]);
    assert!(ok && stdout.contains("5 workers"), "{stdout}{stderr}");

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sticky.toml");
    let output = Command::new(sticky_bin())
        .args(["check", "--config", example.to_str().unwrap()])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        // A service's PATH: its `python3` must be one the workers' user (nobody) may run.
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn sd_notify_messages_arrive_in_order() {
    in_netns(|| {
        let dir = StateDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let socket_path = dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let env = [
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
            ("FDSTORE", "8"),
        ];
        let mut sticky = Sticky::start_with_env(&["--listen", "127.0.0.1:3050", "-w", "2"], &env);
        // Read the socket all along, as systemd does.
        let (sender, incoming) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buffer) {
                if sender.send(text(&buffer[..n])).is_err() {
                    break;
                }
            }
        });
        let mut messages = Vec::new();
        // Receives messages until one contains `until`, and returns that one.
        let mut receive = |until: &str| loop {
            let message = incoming
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {until} after {messages:?}"));
            messages.push(message.clone());
            if message.contains(until) {
                return message;
            }
        };
        let ready = receive("READY=1");
        sticky.wait_until_serving(2);
        assert!(ready.contains("STATUS=2 workers on 127.0.0.1:3050"), "{ready}");
        receive("WATCHDOG=1");
        let reload = sticky.control(Request::Reload);
        assert!(matches!(reload, sticky_user::control::Response::Done { .. }), "{reload:?}");
        let reloading = receive("RELOADING=1");
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
        receive("READY=1");
        // An upgrade in place: the old image says RELOADING=1, the new one READY=1.
        let upgrade = sticky.control(Request::Upgrade);
        assert!(matches!(upgrade, sticky_user::control::Response::Done { .. }), "{upgrade:?}");
        receive("RELOADING=1");
        receive("READY=1");
        sticky.signal(nix::sys::signal::Signal::SIGTERM);
        receive("STOPPING=1");
        assert!(sticky.wait().status.success());
        let kinds: Vec<&str> = messages
            .iter()
            .filter_map(|m| {
                ["READY=1", "RELOADING=1", "STOPPING=1"].into_iter().find(|k| m.contains(k))
            })
            .collect();
        let expected =
            ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"];
        assert_eq!(kinds, expected, "{messages:?}");
        // Before the first READY=1: the listening sockets and the socket array, for the fd store
        // ($FDSTORE is set), and nothing stored again by the upgrade.
        let stored: Vec<&str> = messages
            .iter()
            .filter(|m| m.contains("FDSTORE=1"))
            .filter_map(|m| m.lines().find_map(|line| line.strip_prefix("FDNAME=")))
            .collect();
        assert_eq!(stored, ["sticky-slot-0", "sticky-slot-1", "sticky-map-127.0.0.1_3050"]);
        let first_ready = messages.iter().position(|m| m.contains("READY=1")).unwrap();
        let last_store = messages.iter().rposition(|m| m.contains("FDSTORE=1")).unwrap();
        assert!(last_store < first_ready, "{messages:?}");
    });
}

#[test]
fn workers_run_as_the_configured_user_without_capabilities() {
    in_netns(|| {
        let args =
            ["--listen", "127.0.0.1:3051", "-w", "2", "--user", "nobody", "--group", "nogroup"];
        let sticky = Sticky::serving(&args, 2);
        let server = "127.0.0.1:3051".parse().unwrap();
        let pid = get(client_v4(1), server).pid;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Uid:"), ["65534"; 4], "{status}");
        let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap().gid.to_string();
        assert_eq!(field("Gid:"), [nogroup.as_str(); 4], "{status}");
        for caps in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            assert_eq!(field(caps), ["0000000000000000"], "{caps} {status}");
        }
        sticky.stop_cleanly();
    });
}

#[test]
fn status_and_metrics_count_the_connections_the_test_made() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3052", "-w", "3", "--metrics", "9100"];
        let sticky = Sticky::serving(&args, 3);
        let server = "127.0.0.1:3052".parse().unwrap();
        let mut made = vec![0u64; 3];
        for client in (0..300).map(client_v4) {
            made[get(client, server).worker as usize] += 1;
        }
        let status = sticky.status();
        let connections: Vec<u64> = status.slots.iter().map(|s| s.connections).collect();
        assert_eq!(connections, made);
        assert!(status.slots.iter().all(|s| s.pid.is_some() && s.in_table));
        // Each slot's share of the table: 16384 entries over 3 slots, 5461 or 5462 each.
        let entries: Vec<f64> =
            status.slots.iter().map(|s| s.table_share.expect("a share") * 16384.0).collect();
        assert!(entries.iter().all(|&e| e == 5461.0 || e == 5462.0), "{entries:?}");

        let json = sticky.status_json();
        assert_eq!(json.slots.iter().map(|s| s.connections).collect::<Vec<_>>(), made);

        let metrics = scrape("127.0.0.1:9100".parse().unwrap());
        // Counters are integers; some gauges (shares, CPU seconds) are not.
        let samples: HashMap<&str, f64> = metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k, v.parse().unwrap())))
            .collect();
        for (slot, count) in made.iter().enumerate() {
            assert_eq!(
                samples[format!("sticky_connections_total{{slot=\"{slot}\"}}").as_str()],
                *count as f64,
                "{metrics}"
            );
        }
        assert_eq!(samples["sticky_workers_up"], 3.0);
        assert_eq!(samples["sticky_fallbacks_total"], 0.0);
        sticky.stop_cleanly();
    });
}

/// GET /metrics.
fn scrape(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}
