//! `sticky install`: a configuration file and a hardened systemd unit for one named service, or
//! only the configuration file when the packaged template unit `sticky@.service` serves it.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use nix::unistd::{Gid, Uid};
use sticky_common::MAX_SLOTS;
use thiserror::Error;

use crate::{
    config::{MAX_LISTEN_ADDRESSES, RunConfig, RunOptions},
    path_error::PathError,
    privileges::{self, Need},
};

/// Where the Debian package puts the template unit whose instance `sticky@NAME` runs
/// `sticky run --config /etc/sticky/NAME.toml`.
pub const TEMPLATE_UNIT: &str = "/usr/lib/systemd/system/sticky@.service";
/// Where the Debian package puts the binary.
pub const PACKAGED_BIN: &str = "/usr/bin/sticky";

/// The unit's hard open-files limit: room for the largest configuration (every slot on every
/// listen address, see [`crate::limits::fds_needed`]) many times over.
pub const UNIT_NOFILE: u64 = 65536;

/// Why a service cannot be installed or removed.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The name has characters a unit name cannot carry.
    #[error("invalid service name '{0}': use letters, digits, '-' and '_'")]
    Name(String),
    /// The service exists already.
    #[error("{} exists already: run `sticky uninstall {name}` first", path.display())]
    Exists {
        /// The service name.
        name: String,
        /// The file in the way.
        path: PathBuf,
    },
    /// The service is not installed.
    #[error("{0} is not installed: {path} does not exist", path = .1.display())]
    NotInstalled(String, PathBuf),
    /// The configuration could not be written as TOML.
    #[error("cannot write the configuration as TOML")]
    Toml(#[from] toml::ser::Error),
    /// A file could not be written or removed.
    #[error(transparent)]
    Io(#[from] PathError),
}

/// The files of service `name` under `root` (`/` for the real system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFiles {
    /// The service name (the unit is `sticky-NAME.service`).
    pub name: String,
    /// `ROOT/etc/sticky/NAME.toml`.
    pub config: PathBuf,
    /// `ROOT/etc/systemd/system/sticky-NAME.service`, or `None` when the service is the
    /// instance `sticky@NAME` of the packaged [`TEMPLATE_UNIT`].
    pub unit: Option<PathBuf>,
}

impl ServiceFiles {
    /// The paths for service `name` under `root`: an instance of the packaged template when
    /// `root` has it, unless the service has a unit of its own already.
    pub fn new(name: &str, root: &Path) -> Result<Self, ServiceError> {
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(ServiceError::Name(name.into()));
        }
        let own = root.join(format!("etc/systemd/system/sticky-{name}.service"));
        let template = root.join(TEMPLATE_UNIT.trim_start_matches('/'));
        Ok(Self {
            name: name.into(),
            config: root.join(format!("etc/sticky/{name}.toml")),
            unit: (own.exists() || !template.exists()).then_some(own),
        })
    }

    /// Whether any of the service's files exists.
    pub fn installed(&self) -> bool {
        self.config.exists() || self.unit.as_ref().is_some_and(|unit| unit.exists())
    }

    /// The path the unit refers to the configuration by (outside any `--root`).
    fn config_on_system(&self) -> String {
        format!("/etc/sticky/{}.toml", self.name)
    }

    /// The unit name: `sticky-NAME.service`, or `sticky@NAME.service` for a template instance.
    pub fn unit_name(&self) -> String {
        match self.unit {
            Some(_) => format!("sticky-{}.service", self.name),
            None => format!("sticky@{}.service", self.name),
        }
    }
}

/// The configuration file for the service: `input` with the service's own state directory and
/// control socket (under systemd's StateDirectory= and RuntimeDirectory=).
pub fn config_file(files: &ServiceFiles, input: &RunOptions) -> Result<String, ServiceError> {
    let mut input = input.clone();
    input.state_dir = Some(format!("/var/lib/sticky/{}", files.name).into());
    input.control = Some(control_socket(&files.name).into());
    let header = format!(
        "# sticky service '{}', read by {} (see `sticky run --help`).\n",
        files.name,
        files.unit_name()
    );
    Ok(header + &toml::to_string(&input)?)
}

/// The control socket of service `name`.
pub fn control_socket(name: &str) -> String {
    format!("/run/sticky/{name}/control.sock")
}

/// The systemd unit for the service, running `sticky` (at `bin`) with least privilege: the
/// loader runs as root with exactly the capabilities [`privileges::required`] names for
/// `config`, each explained in a comment.
pub fn unit_file(files: &ServiceFiles, config: &RunConfig, bin: &Path) -> String {
    let name = &files.name;
    render(&UnitSpec {
        name,
        origin: format!(
            "Installed by `sticky install {name}`; remove with `sticky uninstall {name}`."
        ),
        needs: privileges::required(config, Uid::from_raw(0), Gid::from_raw(0)),
        config_path: files.config_on_system(),
        start_timeout: start_timeout(config).to_string(),
        stop_timeout: (config.policy.grace_period.as_secs() + 10).to_string(),
        bin,
    })
}

/// The packaged template unit [`TEMPLATE_UNIT`], running `sticky` (at `bin`): the unit
/// [`unit_file`] writes, for the service named by the instance (`%i`). It grants every
/// capability some configuration needs ([`privileges::any_configuration`]); sticky bounds its
/// own start and rolling restarts (by the instance's ready timeout and grace period), and a stop
/// gets systemd's default 90 s.
pub fn template_unit(bin: &Path) -> String {
    render(&UnitSpec {
        name: "%i",
        origin: [
            "Installed by the sticky package: `sticky install NAME` writes /etc/sticky/NAME.toml",
            "# and enables sticky@NAME. sticky bounds each instance's start and rolling restarts",
            "# itself (its ready timeout and grace period per slot), so TimeoutStartSec=infinity;",
            "# an instance whose grace period exceeds 80 s needs a longer TimeoutStopSec= (drop-in).",
        ]
        .join("\n"),
        needs: privileges::any_configuration(),
        config_path: "/etc/sticky/%i.toml".into(),
        start_timeout: "infinity".into(),
        stop_timeout: "90".into(),
        bin,
    })
}

/// What tells one unit apart from another: the service's own unit or the template.
struct UnitSpec<'a> {
    /// The service name in descriptions and paths (`%i` in the template).
    name: &'a str,
    /// The first comment line: who wrote the unit.
    origin: String,
    /// The capabilities the loader keeps.
    needs: Vec<Need>,
    /// The configuration file, as the unit names it.
    config_path: String,
    /// TimeoutStartSec=.
    start_timeout: String,
    /// TimeoutStopSec=.
    stop_timeout: String,
    /// The sticky binary.
    bin: &'a Path,
}

/// The unit text for `spec`, hardened.
fn render(spec: &UnitSpec) -> String {
    let needs = &spec.needs;
    let capabilities: Vec<String> = needs.iter().map(|need| need.capability.to_string()).collect();
    let capabilities = capabilities.join(" ");
    let reasons: String =
        needs.iter().map(|need| format!("#   {}: {}\n", need.capability, need.reason)).collect();
    let name = spec.name;
    let bin = spec.bin.display();
    let config_path = &spec.config_path;
    format!(
        "\
# {origin}
[Unit]
Description=sticky: sticky sessions for {name}
After=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={bin} run --config {config_path}
ExecReload={bin} reload --control {control}
Restart=on-failure
RestartSec=1s
# A rolling restart (ExecReload) is bounded by this too: per slot, the new worker's ready
# timeout and the old one's grace period.
TimeoutStartSec={start_timeout}
TimeoutStopSec={stop_timeout}
KillMode=mixed
# The listening sockets stay in systemd's fd store across `systemctl restart` and a crash of
# the loader, which adopts them again: no connection is refused meanwhile. systemd 254 and
# later set $FDSTORE from FileDescriptorStoreMax= themselves; 252 does not.
FileDescriptorStoreMax={fd_store}
Environment=FDSTORE={fd_store}
StateDirectory=sticky/{name}
StateDirectoryMode=0700
RuntimeDirectory=sticky/{name}
RuntimeDirectoryMode=0750
# Files sticky creates (the seed, its sockets) are its own; workers get the same umask.
UMask=0077
# sticky raises its soft limit to the hard one at start; workers get the soft one back.
LimitNOFILE=1024:{nofile}
# The loader keeps only what it needs; the workers keep no capability (sticky empties every
# set before it executes one). CAP_PERFMON is not needed: the program passes the verifier's
# rules for loaders without it.
{reasons}CapabilityBoundingSet={capabilities}
AmbientCapabilities={capabilities}
NoNewPrivileges=yes
# The workers inherit the filter. bpf() loads the program; it is in @privileged, which the
# loader otherwise needs only for setuid/setgid and capset (in @setuid, @system-service).
SystemCallFilter=@system-service bpf
SystemCallErrorNumber=EPERM
SystemCallArchitectures=native
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
PrivateIPC=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# What `systemd-analyze security` still marks, and why it stays:
#   User=, AmbientCapabilities=, CapabilityBoundingSet=: the loader runs as root with only the
#     capabilities above, each for the reason given;
#   SystemCallFilter=~@privileged: bpf(), setuid(), setgroups() are in it; ~@resources: workers
#     may set their own priorities and limits;
#   RestrictAddressFamilies=: AF_INET and AF_INET6 to serve, AF_UNIX for the control socket and
#     the workers' readiness; PrivateNetwork=, IPAddressDeny=: it serves the network;
#   PrivateUsers=: the workers' user must exist in the service's user namespace;
#   ProtectProc=, ProcSubset=: the workers' runtimes read /proc (CPUs, memory, their own pids);
#   ProtectHome=read-only rather than yes: worker programs may live under /home;
#   MemoryDenyWriteExecute=: JIT runtimes (node, the JVM) need writable executable memory;
#   RootDirectory=: the workers are the host's own programs;
#   DeviceAllow=char-rtc:r: what ProtectClock= itself allows.

[Install]
WantedBy=multi-user.target
",
        origin = spec.origin,
        control = control_socket(name),
        // A socket per slot and address, and a socket array per address.
        fd_store = (MAX_SLOTS as usize + 1) * MAX_LISTEN_ADDRESSES,
        nofile = UNIT_NOFILE,
        stop_timeout = spec.stop_timeout,
        start_timeout = spec.start_timeout,
    )
}

/// Seconds systemd gives a start or a rolling restart: every slot's ready timeout and grace
/// period, plus a margin, and never less than systemd's default 90 s.
fn start_timeout(config: &RunConfig) -> u64 {
    let policy = &config.policy;
    let per_slot = policy.ready_timeout + policy.grace_period;
    (per_slot * config.workers).as_secs().saturating_add(30).max(90)
}

/// Writes `contents` to a new file at `path` with `mode`, creating its directory; refuses to
/// replace a file (or follow a symlink).
pub fn write_new(
    files: &ServiceFiles,
    path: &Path,
    contents: &str,
    mode: u32,
) -> Result<(), ServiceError> {
    if path.symlink_metadata().is_ok() {
        return Err(ServiceError::Exists { name: files.name.clone(), path: path.into() });
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(PathError::at("create the directory of", path))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(PathError::at("write", path))?;
    // The mode is narrowed by the umask at creation; say it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(PathError::at("write", path))?;
    Ok(())
}

/// Removes the service's files; fails if none exists.
pub fn remove(files: &ServiceFiles) -> Result<(), ServiceError> {
    if !files.installed() {
        return Err(ServiceError::NotInstalled(files.unit_name(), files.config.clone()));
    }
    for path in files.unit.iter().chain([&files.config]) {
        match fs::remove_file(path) {
            Err(source) if source.kind() != io::ErrorKind::NotFound => {
                return Err(PathError::at("remove", path)(source).into());
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(ServiceFiles::new("web-1", Path::new("/")).is_ok());
        assert!(matches!(ServiceFiles::new("a/b", Path::new("/")), Err(ServiceError::Name(_))));
        assert!(matches!(ServiceFiles::new("", Path::new("/")), Err(ServiceError::Name(_))));
    }

    #[test]
    fn the_template_is_the_generated_unit_for_any_instance() {
        let files = ServiceFiles::new("web", Path::new("/nonexistent")).unwrap();
        // A configuration that needs every capability.
        let options = RunOptions {
            user: Some("nobody".into()),
            listen: vec!["[::]:80".into()],
            ..Default::default()
        };
        let config = RunConfig::resolve(options, &crate::config::System).unwrap();
        let bin = Path::new(PACKAGED_BIN);
        let unit = unit_file(&files, &config, bin).replace("web", "%i");
        let template = template_unit(bin);
        // Only the comments and the timeouts may differ.
        let lines = |text: &str| -> Vec<String> {
            let same = |line: &&str| !line.starts_with('#') && !line.starts_with("Timeout");
            text.lines().filter(same).map(Into::into).collect()
        };
        assert_eq!(lines(&unit), lines(&template));
        assert!(template.contains("ExecStart=/usr/bin/sticky run --config /etc/sticky/%i.toml"));
    }

    #[test]
    fn a_packaged_template_serves_new_services_but_not_those_with_a_unit() {
        let root = std::env::temp_dir().join(format!("sticky-service-test-{}", std::process::id()));
        let template = root.join(TEMPLATE_UNIT.trim_start_matches('/'));
        fs::create_dir_all(template.parent().unwrap()).unwrap();
        let web = ServiceFiles::new("web", &root).unwrap();
        assert_eq!((web.unit.is_some(), web.unit_name()), (true, "sticky-web.service".into()));
        fs::write(&template, "").unwrap();
        let web = ServiceFiles::new("web", &root).unwrap();
        assert_eq!((web.unit.clone(), web.unit_name()), (None, "sticky@web.service".into()));
        let own = root.join("etc/systemd/system/sticky-api.service");
        fs::create_dir_all(own.parent().unwrap()).unwrap();
        fs::write(&own, "").unwrap();
        assert_eq!(ServiceFiles::new("api", &root).unwrap().unit, Some(own));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_config_file_reads_back() {
        let files = ServiceFiles::new("web", Path::new("/")).unwrap();
        let input = RunOptions {
            workers: Some(4),
            command: vec!["node".into(), "app.js".into()],
            user: Some("nobody".into()),
            ..Default::default()
        };
        let text = config_file(&files, &input).unwrap();
        let back: RunOptions = toml::from_str(&text).unwrap();
        assert_eq!(back.workers, Some(4));
        assert_eq!(back.command, ["node", "app.js"]);
        assert_eq!(back.control, Some("/run/sticky/web/control.sock".into()));
        assert_eq!(back.state_dir, Some("/var/lib/sticky/web".into()));
    }
}
