//! `sticky top`: the live view in a real terminal (tmux), against a running sticky: a row per
//! slot with the pids `status --json` reports, a killed worker's row with a new pid and one
//! more restart, `r` restarting only the selected slot, every slot's rate above zero under
//! load; the piped snapshot; and the new metrics checked by `promtool check metrics`.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{Load, Sticky, eventually, in_netns, load_clients, sticky_bin};
use sticky_user::control::Status;

/// A tmux server of its own (the tests of this file may run at once), with one 80×24 window
/// running `sticky top`; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn top(control: &std::path::Path) -> Self {
        static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("sticky-top-test-{}-{n}", std::process::id());
        let command = format!("{} top --control {}", sticky_bin().display(), control.display());
        let tmux = Self { socket };
        let status = tmux
            .command()
            .args(["new-session", "-d", "-s", "top", "-x", "80", "-y", "24", &command])
            .env("TERM", "xterm-256color")
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        command
    }

    /// What the window shows now.
    fn capture(&self) -> String {
        let output = self.command().args(["capture-pane", "-p", "-t", "top"]).output();
        String::from_utf8_lossy(&output.expect("tmux capture-pane").stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = self.command().args(["send-keys", "-t", "top"]).args(keys).status();
        assert!(status.expect("tmux send-keys").success());
    }

    /// Waits until the window's rows satisfy `done`; panics with the screen otherwise.
    fn until(&self, what: &str, mut done: impl FnMut(&[Row]) -> bool) -> Vec<Row> {
        let mut last = String::new();
        let mut rows = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !done(&rows) {
            assert!(std::time::Instant::now() < deadline, "{what}; the screen:\n{last}");
            std::thread::sleep(std::time::Duration::from_millis(100));
            last = self.capture();
            rows = parse(&last);
        }
        rows
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

/// A slot's row as shown: slot, pid, state, connections per second, restarts.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    slot: u32,
    pid: Option<u32>,
    state: String,
    rate: Option<f64>,
    restarts: u32,
}

/// The slot rows of a screen or a piped snapshot: lines whose first word is a number.
fn parse(screen: &str) -> Vec<Row> {
    screen
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let slot = words.first()?.parse().ok()?;
            (words.len() >= 10).then_some(())?;
            Some(Row {
                slot,
                pid: words[1].parse().ok(),
                state: words[2].to_owned(),
                rate: words[3].parse().ok(),
                restarts: words[6].parse().ok()?,
            })
        })
        .collect()
}

/// `sticky status --json`, as the CLI prints it.
fn status_json(sticky: &Sticky) -> Status {
    sticky.status_json()
}

fn pids(status: &Status) -> Vec<Option<u32>> {
    status.slots.iter().map(|slot| slot.pid).collect()
}

#[test]
fn top_shows_each_slot_a_killed_worker_returns_and_r_restarts_one_slot() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3301", "--workers", "4"], 4);
        let status = status_json(&sticky);
        let tmux = Tmux::top(sticky.control_path());
        let expected = pids(&status);
        let rows = tmux.until("a row per slot with its pid", |rows| {
            rows.iter().map(|r| r.pid).collect::<Vec<_>>() == expected
        });
        assert!(rows.iter().all(|r| r.state == "ready" && r.restarts == 0), "{rows:?}");

        // kill -9 of slot 2's worker: its row shows a new pid and one more restart.
        let victim = status.slots[2].pid.expect("a worker");
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill the worker");
        let rows = tmux.until("slot 2 with a new pid and a restart", |rows| {
            rows.get(2).is_some_and(|r| r.pid.is_some_and(|p| p != victim) && r.restarts == 1)
        });
        let after = status_json(&sticky);
        assert_eq!(rows[2].pid, after.slots[2].pid);
        for slot in [0, 1, 3] {
            assert_eq!(rows[slot].pid, status.slots[slot].pid, "slot {slot} was touched");
        }

        // `r` on the selected slot (the first), confirmed: only slot 0 gets a new worker, and
        // a replacement is no crash (no restart counted).
        tmux.keys(&["r"]);
        tmux.until("the question", |_| tmux.capture().contains("restart slot 0"));
        tmux.keys(&["y"]);
        let rows = tmux.until("slot 0 with a new pid", |rows| {
            rows.first().is_some_and(|r| r.pid.is_some() && r.pid != status.slots[0].pid)
        });
        assert_eq!(rows[0].restarts, 0, "{rows:?}");
        let now = status_json(&sticky);
        assert_eq!(pids(&now)[1..], pids(&after)[1..], "another slot was restarted");
        drop(tmux);
        sticky.stop_cleanly();
    });
}

#[test]
fn under_load_every_slot_has_connections_per_second() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3302", "--workers", "4"], 4);
        let server: SocketAddr = "127.0.0.1:3302".parse().unwrap();
        let load = Load::start(server, &load_clients(), 4);
        let tmux = Tmux::top(sticky.control_path());
        let rows = tmux.until("every slot's rate above zero", |rows| {
            rows.len() == 4 && rows.iter().all(|r| r.rate.is_some_and(|rate| rate > 0.0))
        });
        println!("rates: {:?}", rows.iter().map(|r| r.rate).collect::<Vec<_>>());
        drop(tmux);
        let report = load.stop();
        assert!(report.failures().is_empty(), "{}", report.summary());
        sticky.stop_cleanly();
    });
}

#[test]
fn piped_top_prints_one_table() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3303", "--workers", "3"], 3);
        let output = Command::new(sticky_bin())
            .args(["top", "--control"])
            .arg(sticky.control_path())
            .stdout(Stdio::piped())
            .output()
            .expect("sticky top");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).expect("UTF-8");
        assert!(!text.contains('\x1b'), "escape sequences in piped output:\n{text}");
        let heading = text.lines().find(|line| line.starts_with("SLOT")).expect("a heading");
        let columns: Vec<&str> = heading.split_whitespace().collect();
        assert_eq!(
            columns,
            [
                "SLOT", "PID", "STATE", "CONN/S", "QUEUE", "SHARE", "RST", "UPTIME", "CPU%", "RSS",
                "STATUS"
            ]
        );
        let rows = parse(&text);
        let status = sticky.status();
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), pids(&status), "{text}");
        assert!(rows.iter().all(|r| r.rate == Some(0.0)), "no load, no rate:\n{text}");
        sticky.stop_cleanly();
    });
}

#[test]
fn the_metrics_pass_promtool_and_explain_each_slot() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3304", "--workers", "3", "--metrics", "127.0.0.1:9304"];
        let sticky = Sticky::serving(&args, 3);
        let _ = sticky.control(sticky_user::control::Request::Reload);
        // The workers' CPU and memory are read once a second: the new workers' come with a
        // later scrape.
        let mut body = String::new();
        eventually("every worker's memory in /metrics", || {
            body = scrape("127.0.0.1:9304".parse().unwrap());
            body.matches("sticky_worker_resident_memory_bytes{").count() == 3
        });
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool (Debian package prometheus)");
        std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), body.as_bytes()).unwrap();
        let checked = promtool.wait_with_output().expect("promtool");
        let said = String::from_utf8_lossy(&checked.stdout).into_owned()
            + &String::from_utf8_lossy(&checked.stderr);
        assert!(checked.status.success() && said.trim().is_empty(), "promtool: {said}\n{body}");
        let status = sticky.status();
        for slot in &status.slots {
            let s = slot.slot;
            for line in [
                format!("sticky_accept_queue{{slot=\"{s}\"}} 0"),
                format!("sticky_slot_state{{slot=\"{s}\",state=\"ready\"}} 1"),
                format!("sticky_slot_state{{slot=\"{s}\",state=\"hung\"}} 0"),
                format!("sticky_table_share{{slot=\"{s}\"}} "),
                format!("sticky_worker_ready_time_seconds{{slot=\"{s}\"}} "),
                format!("sticky_worker_cpu_seconds_total{{slot=\"{s}\"}} "),
                format!("sticky_worker_resident_memory_bytes{{slot=\"{s}\"}} "),
            ] {
                assert!(body.contains(&line), "no {line}:\n{body}");
            }
        }
        let version = env!("CARGO_PKG_VERSION");
        assert!(body.contains(&format!("sticky_build_info{{version=\"{version}\",build_id=\"")));
        assert!(body.contains("sticky_last_reload_success 1\n"), "{body}");
        assert!(body.contains("sticky_last_reload_timestamp_seconds "), "{body}");
        sticky.stop_cleanly();
    });
}

/// The body of `GET /metrics`.
fn scrape(address: SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to /metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").expect("a body").1.to_owned()
}
