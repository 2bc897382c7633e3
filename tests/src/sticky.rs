//! Runs the real `sticky` binary and reads its status and what it logs.

use std::{
    env,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_user::control::{self, Request, Response, Status};

/// The `sticky` binary under test: `$STICKY_BIN`, or `sticky` in the test's target dir.
pub fn sticky_bin() -> PathBuf {
    env::var_os("STICKY_BIN").map_or_else(|| target_bin("sticky", "sticky-user"), PathBuf::from)
}

/// Binary `name` of workspace package `package`, built into the test's own target dir.
pub fn target_bin(name: &str, package: &str) -> PathBuf {
    let exe = env::current_exe().expect("current_exe");
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join(name);
    assert!(path.exists(), "{} is missing: run `cargo build -p {package}` first", path.display());
    path
}

/// A running `sticky`, its stderr collected as it comes.
pub struct Sticky {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
    /// The state directory `start` made, removed with this value.
    _state: Option<StateDir>,
    /// The control socket, when started with a state directory.
    control: Option<PathBuf>,
}

/// How `sticky` ended.
#[derive(Debug)]
pub struct Exit {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub log: String,
}

/// The dispatch counters `sticky` logs for one listen address when it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Connections the program selected each slot for.
    pub selected: Vec<u64>,
    /// Connections that fell back to another slot.
    pub fallback: u64,
    /// Connections left to the kernel.
    pub passed: u64,
    /// Unreadable packets.
    pub unreadable: u64,
}

/// The capability bounding set of the unit `sticky install` writes, with every capability it
/// may grant: sticky runs under it in the tests, as it does as a service.
pub const UNIT_BOUNDING_SET: &str = "-all,+bpf,+net_admin,+setuid,+setgid,+kill,+net_bind_service";
/// The unprivileged user the tests' workers run as, unless a test names another.
pub const WORKER_USER: &str = "nobody";

impl Sticky {
    /// Starts `sticky run ARGS` as deployed (the unit's capabilities, workers as `nobody`) with
    /// a fresh state directory.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, |_| {})
    }

    /// Starts `sticky run ARGS` as [`Sticky::start`] does and waits until `workers` workers
    /// serve (see [`Sticky::wait_until_serving`]).
    pub fn serving(args: &[&str], workers: usize) -> Self {
        let mut sticky = Self::start(args);
        sticky.wait_until_serving(workers);
        sticky
    }

    /// Like [`Sticky::start`], with extra environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(args, |command| {
            command.envs(env.iter().copied());
        })
    }

    /// Like [`Sticky::start`], with the command changed by `customize` before it starts.
    pub fn start_with(args: &[&str], customize: impl FnOnce(&mut Command)) -> Self {
        let state = StateDir::new();
        let mut command = Self::command(&sticky_bin(), &state, args);
        customize(&mut command);
        Self::spawn_owning(state, command)
    }

    /// Starts `sticky run ARGS` as user `nobody` holding `capabilities` (setpriv's syntax, e.g.
    /// `+bpf,+net_admin`) as ambient capabilities, as docs/security.md suggests for a loader that is
    /// not root, with a fresh state directory.
    pub fn start_unprivileged(capabilities: &str, args: &[&str]) -> Self {
        let state = StateDir::new();
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        command.arg(format!("--inh-caps={capabilities}"));
        command.arg(format!("--ambient-caps={capabilities}"));
        command.arg(sticky_bin()).arg("run").arg("--state-dir").arg(&state.0);
        command.arg("--control").arg(state.control()).args(args);
        Self::spawn_owning(state, command)
    }

    /// Starts `sticky run --state-dir STATE ARGS` as deployed.
    pub fn start_with_state(state: &StateDir, args: &[&str]) -> Self {
        Self::start_with_state_env(state, args, &[])
    }

    /// Like [`Sticky::start_with_state`], with extra environment.
    pub fn start_with_state_env(state: &StateDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Self::command(&sticky_bin(), state, args);
        command.envs(env.iter().copied());
        let mut sticky = Self::spawn(command);
        sticky.control = Some(state.control());
        sticky
    }

    /// Like [`Sticky::start`], running the sticky binary at `binary` (which an upgrade
    /// executes again).
    pub fn start_binary(binary: &std::path::Path, args: &[&str]) -> Self {
        let state = StateDir::new();
        let command = Self::command(binary, &state, args);
        Self::spawn_owning(state, command)
    }

    /// `sticky run` as deployed, from `binary`, with `state` as its state directory and control
    /// socket, and `args`: root limited to [`UNIT_BOUNDING_SET`], workers as [`WORKER_USER`]
    /// unless `args` choose their identity.
    fn command(binary: &std::path::Path, state: &StateDir, args: &[&str]) -> Command {
        let mut command = Command::new("setpriv");
        // The unit's CapabilityBoundingSet= and AmbientCapabilities= (which systemd also puts
        // in the inheritable set).
        command.arg(format!("--bounding-set={UNIT_BOUNDING_SET}"));
        command.arg(format!("--inh-caps={UNIT_BOUNDING_SET}"));
        command.arg(format!("--ambient-caps={UNIT_BOUNDING_SET}")).arg(binary);
        command.arg("run").arg("--state-dir").arg(&state.0);
        command.arg("--control").arg(state.control());
        if !args.iter().any(|a| a.starts_with("--user") || *a == "--allow-root-workers") {
            command.args(["--user", WORKER_USER]);
        }
        command.args(args);
        command
    }

    /// Starts `command`, a `sticky run` using `state`'s state directory and control socket,
    /// which the returned value removes when dropped.
    fn spawn_owning(state: StateDir, command: Command) -> Self {
        let mut sticky = Self::spawn(command);
        sticky.control = Some(state.control());
        sticky._state = Some(state);
        sticky
    }

    /// Starts `command` (a `sticky` invocation) with stderr collected.
    pub fn spawn(mut command: Command) -> Self {
        let mut child =
            command.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start sticky");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log, reader: Some(reader), _state: None, control: None }
    }

    /// The pid of the `sticky` process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `sticky` has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Waits (at most 30 s) until the log satisfies `ready`; panics with the log otherwise, or
    /// if `sticky` exits first.
    pub fn wait_for(&mut self, what: &str, ready: impl Fn(&str) -> bool) {
        self.wait_until(what, |sticky| ready(&sticky.log()));
    }

    /// Waits (at most 30 s) until `ready` holds; panics with the log otherwise, or if `sticky`
    /// exits first.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("sticky exited ({status}) before {what}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", self.log());
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 30 s) until the control socket answers and its status has `workers` slots,
    /// each with a ready worker; panics with the log otherwise, or if `sticky` exits first.
    pub fn wait_until_serving(&mut self, workers: usize) {
        let path = self.control_path().to_owned();
        self.wait_until(&format!("{workers} workers to serve"), |_| {
            matches!(
                control::request(&path, &Request::Status),
                Ok(Response::Status(status))
                    if status.slots.len() == workers
                        && status.slots.iter().all(|s| s.pid.is_some() && s.ready)
            )
        });
    }

    /// Waits until `workers` workers have been started, counting restarts and workers that
    /// exited at once, from the log.
    pub fn wait_for_workers(&mut self, workers: usize) {
        self.wait_for("workers to start", |log| log.matches("worker started").count() >= workers);
    }

    /// Sends `request` over the control socket; panics unless it is answered.
    pub fn control(&self, request: Request) -> Response {
        let path = self.control.as_ref().expect("started with a control socket");
        control::request(path, &request).unwrap_or_else(|err| panic!("{err}:\n{}", self.log()))
    }

    /// `sticky status --json`, as the CLI prints it (the control socket's answer, through the
    /// binary under test); panics unless it succeeds.
    pub fn status_json(&self) -> Status {
        let output = Command::new(sticky_bin())
            .args(["status", "--json", "--control"])
            .arg(self.control_path())
            .output()
            .expect("sticky status --json");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("status JSON")
    }

    /// The loader's status; panics unless it answers.
    pub fn status(&self) -> Status {
        match self.control(Request::Status) {
            Response::Status(status) => *status,
            other => panic!("status answered {other:?}"),
        }
    }

    /// The control socket's path.
    pub fn control_path(&self) -> &std::path::Path {
        self.control.as_deref().expect("started with a control socket")
    }

    /// Sends `signal` to `sticky` itself.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal sticky");
    }

    /// Stops `sticky` with SIGTERM and waits (at most 60 s) for it to exit.
    pub fn stop(self) -> Exit {
        self.signal(Signal::SIGTERM);
        self.wait()
    }

    /// Stops `sticky` with SIGTERM and asserts that it exited 0 and left no process behind.
    pub fn stop_cleanly(self) -> Exit {
        let exit = self.stop();
        assert!(exit.status.success(), "sticky failed:\n{}", exit.log);
        assert_eq!(crate::processes_in_netns(), Vec::<u32>::new(), "processes left behind");
        exit
    }

    /// Waits (at most 60 s) for `sticky` to exit by itself.
    pub fn wait(mut self) -> Exit {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sticky did not exit:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stderr reader");
        }
        Exit { status, log: self.log() }
    }
}

impl Drop for Sticky {
    fn drop(&mut self) {
        // A failed test must not leave sticky behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exit {
    /// The dispatch counters logged at exit, one per listen address.
    pub fn counters(&self) -> Vec<Counters> {
        self.log
            .lines()
            .filter(|line| line.contains("dispatch counters"))
            .map(|line| {
                let selected = line.split("selected=[").nth(1).and_then(|s| s.split(']').next());
                Counters {
                    selected: selected
                        .expect("selected=")
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| s.trim().parse().expect("count"))
                        .collect(),
                    fallback: field(line, "fallback=").expect("fallback="),
                    passed: field(line, "passed=").expect("passed="),
                    unreadable: field(line, "unreadable=").expect("unreadable="),
                }
            })
            .collect()
    }

    /// The lines that report an error.
    pub fn errors(&self) -> Vec<&str> {
        self.log.lines().filter(|line| line.starts_with("sticky: error:")).collect()
    }
}

/// The number after `name` in a log line.
fn field<T: std::str::FromStr>(line: &str, name: &str) -> Option<T> {
    let value = line.split(name).nth(1)?;
    value.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A state directory for sticky (not yet created: sticky creates it), removed on drop.
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// A new directory name under the system's temporary directory.
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let next = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(env::temp_dir().join(format!("sticky-test-{}-{next}", std::process::id())))
    }
}

impl StateDir {
    /// The control socket path used by sticky started with this state directory.
    pub fn control(&self) -> PathBuf {
        self.0.join("control.sock")
    }
}

impl Default for StateDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
