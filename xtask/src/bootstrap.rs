//! Checks, and installs where missing, what building and testing sticky needs:
//! the nightly toolchain with rust-src (the eBPF crate builds `core` itself), the LLVM
//! development packages matching nightly's LLVM, bpf-linker built against them, and the
//! tools the integration tests call (iproute2, util-linux's setpriv, python3, node with npm and
//! the socket.io example's packages, systemd-analyze, redis-server and chromium for the socket.io
//! chat, and openssl, curl, nginx with its stream module, nftables and haproxy for the
//! deployment recipes and the proxies in front of sticky; tmux and promtool for `sticky top`
//! and the metrics; for the drop-in tests socket.io and
//! TypeScript, golang, and uvicorn, gunicorn and python-socketio in target/pyenv), and for the
//! service test a real systemd:
//! mmdebstrap, systemd-nspawn and a container root kept under target/.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::shell::{self, as_root, output, run, say};

/// The bpf-linker release these instructions were verified with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything the build needs.
pub fn build_tools() -> anyhow::Result<()> {
    let llvm = nightly_with_rust_src()?;
    bpf_linker(llvm)?;
    Ok(())
}

/// What the integration tests call, on top of the build tools.
pub fn test_tools() -> anyhow::Result<()> {
    build_tools()?;
    let tools = [
        ("ip", "iproute2"),
        ("setpriv", "util-linux"),
        ("python3", "python3"),
        ("node", "nodejs"),
        ("npm", "npm"),
        ("systemd-analyze", "systemd"),
        ("systemd-notify", "systemd"),
        // docs/deployment.md's recipes: TLS, nginx in front, the nftables balancer.
        ("openssl", "openssl"),
        ("curl", "curl"),
        ("nginx", "nginx"),
        ("nft", "nftables"),
        // Behind a load balancer: HAProxy and nginx in front of sticky (tests/tests/proxies.rs).
        ("haproxy", "haproxy"),
        // `sticky top` in a real terminal, and the metrics checked (tests/tests/top.rs).
        ("tmux", "tmux"),
        ("promtool", "prometheus"),
    ];
    let mut missing: Vec<&str> = tools
        .into_iter()
        .filter(|(tool, _)| !installed(tool))
        .map(|(_, package)| package)
        .collect();
    // nginx's `stream` proxy (with `proxy_protocol on`) is a module of its own in Debian.
    if !Path::new(NGINX_STREAM_MODULE).is_file() {
        missing.push("libnginx-mod-stream");
    }
    if missing.is_empty() {
        say("test tools (ip, setpriv, python3, node, npm, systemd-analyze, systemd-notify, \
             openssl, curl, nginx and its stream module, nft, haproxy, tmux, promtool): present");
    } else {
        apt_install(&missing)?;
    }
    // The Python example runs as `nobody`, who may not reach a per-user python on PATH.
    if !Path::new(SYSTEM_PYTHON).exists() {
        apt_install(&["python3"])?;
    }
    socketio_services()?;
    socketio_packages()?;
    dropin_tools()?;
    container_root()
}

/// Debian's nginx stream module (package libnginx-mod-stream), which the tests load.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The system's python, which the tests' workers run.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// What the container root holds besides the base system: systemd as init, and the tools the
/// service test calls inside it.
/// nodejs and python3 run the example workers under the unit (its system call filter).
const CONTAINER_PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,curl,procps,nodejs,python3";
/// The file that marks a finished container root, holding its package list.
const CONTAINER_DONE: &str = ".sticky-complete";

/// Where the service test's container root is kept (built once, reused).
pub fn container_root_dir() -> PathBuf {
    shell::workspace_root().join("target/systemd-root")
}

/// Ensures the tools that boot a real systemd in a container (mmdebstrap, systemd-nspawn) and
/// the container's root: a minimal Debian of the host's release (so the sticky binary built
/// here runs in it), built once under target/.
fn container_root() -> anyhow::Result<()> {
    ensure_tool("mmdebstrap", "mmdebstrap")?;
    ensure_tool("systemd-nspawn", "systemd-container")?;
    ensure_tool("nsenter", "util-linux")?;
    let root = container_root_dir();
    // The marker holds the package list the root was built with: a new list rebuilds it.
    let built_with = fs::read_to_string(root.join(CONTAINER_DONE)).unwrap_or_default();
    if built_with.trim() == CONTAINER_PACKAGES {
        say("systemd container root: present");
        return Ok(());
    }
    let suite = host_release().unwrap_or_else(|| "bookworm".into());
    say(&format!(
        "building a Debian {suite} root with systemd for the service tests (mmdebstrap, about a minute)"
    ));
    // mmdebstrap runs as root, so its files are root's: handle them as root too.
    let partial = root.with_extension("partial");
    run(as_root("rm").arg("-rf").arg(&partial).arg(&root))?;
    run(as_root("mmdebstrap")
        .args(["--variant=apt", "--quiet", &format!("--include={CONTAINER_PACKAGES}"), &suite])
        .arg(&partial))?;
    run(as_root("sh")
        .arg("-c")
        .arg(format!("echo {CONTAINER_PACKAGES} > \"$1\""))
        .arg("sh")
        .arg(partial.join(CONTAINER_DONE)))?;
    run(as_root("mv").arg(&partial).arg(&root))
}

/// The host's Debian release name (`VERSION_CODENAME` of /etc/os-release).
fn host_release() -> Option<String> {
    let release = fs::read_to_string("/etc/os-release").ok()?;
    let name = release.lines().find_map(|line| line.strip_prefix("VERSION_CODENAME="))?;
    Some(name.trim_matches('"').to_owned()).filter(|name| !name.is_empty())
}

/// Ensures what the socket.io chat's tests start besides sticky: Debian's `redis-server` for
/// the Redis adapter, and Debian's `chromium`, which the browser test drives with puppeteer-core
/// (an npm package that downloads no browser).
fn socketio_services() -> anyhow::Result<()> {
    // Each is both the command and its Debian package.
    let missing: Vec<&str> =
        ["redis-server", "chromium"].into_iter().filter(|tool| !on_path(tool)).collect();
    if missing.is_empty() {
        say("socket.io chat test services (redis-server, chromium): present");
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs the socket.io example's npm packages from its lock file, unless they are there.
fn socketio_packages() -> anyhow::Result<()> {
    npm_ci("socketio")
}

/// Installs the npm packages of `examples/DIR` from its lock file, unless they are there.
fn npm_ci(dir: &str) -> anyhow::Result<()> {
    let example = shell::workspace_root().join("examples").join(dir);
    let modified = |path: PathBuf| fs::metadata(path).and_then(|m| m.modified()).ok();
    let installed = modified(example.join("node_modules/.package-lock.json"));
    if installed.is_some() && installed >= modified(example.join("package-lock.json")) {
        say(&format!("examples/{dir} packages: present"));
        return Ok(());
    }
    say(&format!("installing the packages of examples/{dir} (npm ci)"));
    run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&example))
}

/// What the drop-in tests need besides node: socket.io and TypeScript for the sticky-session
/// examples (npm), Debian's golang for the Go example, and the Python servers' pinned packages
/// (PyPI) in a virtual environment of the system's python, `target/pyenv`, which the workers'
/// user can read.
fn dropin_tools() -> anyhow::Result<()> {
    npm_ci("sticky-session")?;
    ensure_tool("go", "golang")?;
    let requirements = shell::workspace_root().join("examples/python-servers/requirements.txt");
    let venv = python_env_dir();
    // The copy of requirements.txt the environment was made from: a changed file remakes it.
    let installed_from = venv.join("requirements.txt");
    let wanted = fs::read_to_string(&requirements).context("cannot read requirements.txt")?;
    if fs::read_to_string(&installed_from).is_ok_and(|had| had == wanted) {
        say("Python servers' packages (target/pyenv): present");
        return Ok(());
    }
    // Debian's python makes virtual environments (with pip) only with python3-venv.
    let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", "python3-venv"]));
    if !status.is_some_and(|status| status.contains("install ok installed")) {
        apt_install(&["python3-venv"])?;
    }
    say("installing the Python servers' packages into target/pyenv (pip)");
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    run(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "--requirement"])
        .arg(&requirements))?;
    fs::write(&installed_from, wanted).context("cannot record the installed requirements")
}

/// The Python servers' virtual environment.
fn python_env_dir() -> PathBuf {
    shell::workspace_root().join("target/pyenv")
}

/// Ensures `tool` is on PATH, installing Debian package `package` if it is missing.
pub fn ensure_tool(tool: &str, package: &str) -> anyhow::Result<()> {
    if on_path(tool) {
        return Ok(());
    }
    apt_install(&[package])?;
    if !on_path(tool) {
        bail!("{tool} is still missing after installing {package}");
    }
    Ok(())
}

/// Ensures the nightly toolchain and its rust-src; returns nightly's LLVM major version.
fn nightly_with_rust_src() -> anyhow::Result<u32> {
    let version = || output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]));
    if version().is_none() {
        say("the nightly toolchain is missing: installing it");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("the eBPF program needs a nightly toolchain")?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|line| line.trim() == "rust-src") {
        say("nightly with rust-src: present");
    } else {
        say("nightly's rust-src is missing: installing it");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let version = version().context("cannot run nightly's rustc")?;
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|llvm| llvm.split('.').next()?.trim().parse().ok())
        .context("cannot tell nightly's LLVM version from `rustc -vV`")?;
    Ok(major)
}

/// Ensures a bpf-linker built against LLVM `llvm` (nightly's), installing LLVM's development
/// packages and building bpf-linker from crates.io where needed.
fn bpf_linker(llvm: u32) -> anyhow::Result<()> {
    let feature = format!("llvm-{llvm}");
    match installed_bpf_linker_features() {
        Some(features) if features.contains(&feature) => {
            say(&format!("bpf-linker for LLVM {llvm}: present"));
            return Ok(());
        }
        Some(features) => say(&format!(
            "bpf-linker is built for {features:?}, nightly needs {feature}: rebuilding it"
        )),
        None if on_path("bpf-linker") => {
            say("bpf-linker (not installed by cargo, LLVM version unknown): using it");
            return Ok(());
        }
        None => say(&format!("bpf-linker is missing: building it against LLVM {llvm}")),
    }
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{llvm}"));
    if prefix.join("bin/llvm-config").exists() && polly_present(llvm) {
        say(&format!("LLVM {llvm} development files: present"));
    } else {
        apt_install(&[&format!("llvm-{llvm}-dev"), &format!("libpolly-{llvm}-dev")])?;
    }
    say("building bpf-linker (about a minute)");
    run(shell::cargo()
        .args(["install", "bpf-linker", "--locked", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &feature])
        .env("LLVM_PREFIX", &prefix))
    .context("cannot build bpf-linker")
}

/// The features cargo recorded for an installed bpf-linker, if cargo installed one.
fn installed_bpf_linker_features() -> Option<Vec<String>> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    let record: Value =
        serde_json::from_str(&fs::read_to_string(home.join(".crates2.json")).ok()?).ok()?;
    let (_, install) =
        record["installs"].as_object()?.iter().find(|(name, _)| name.starts_with("bpf-linker "))?;
    let features = install["features"].as_array()?;
    Some(features.iter().filter_map(|f| Some(f.as_str()?.to_owned())).collect())
}

fn polly_present(llvm: u32) -> bool {
    let lib = PathBuf::from(format!("/usr/lib/llvm-{llvm}/lib"));
    fs::read_dir(lib).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("libPolly"))
    })
}

/// Whether `tool` is on PATH or in /usr/sbin (nginx and nft are there, and a user's PATH may
/// not have it; the tests run as root, whose PATH does).
fn installed(tool: &str) -> bool {
    on_path(tool) || Path::new("/usr/sbin").join(tool).is_file()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Installs Debian packages (as root, through sudo when needed).
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !on_path("apt-get") {
        bail!("please install {} (no apt-get on this system)", packages.join(", "));
    }
    say(&format!("installing {} with apt-get", packages.join(", ")));
    run(as_root("apt-get").args(["update", "-q"]))?;
    run(as_root("apt-get")
        .args(["install", "-y", "-q"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
