//! What the drop-in tests share: the workspace's examples, an app directory with the
//! sticky-session tarball installed by npm as a seed user installs it, node scripts that print
//! one JSON line, and an HTTP GET whose answer is plain text.

use std::{
    env, fs,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `examples/PATH` in the workspace.
pub fn example(path: &str) -> PathBuf {
    workspace().join("examples").join(path)
}

/// The npm package `cargo xtask dist` makes: `$STICKY_DIST/sticky-session-2.0.0.tgz` (default
/// `target/dist`).
pub fn sticky_session_tarball() -> PathBuf {
    let dist =
        env::var_os("STICKY_DIST").map_or_else(|| workspace().join("target/dist"), PathBuf::from);
    let tarball = dist.join("sticky-session-2.0.0.tgz");
    assert!(tarball.exists(), "{} is missing: run `cargo xtask dist`", tarball.display());
    tarball
}

/// A seed user's app directory: a package.json, `npm install sticky-session-2.0.0.tgz` done in
/// it, and files copied from `examples/sticky-session`. Readable by the workers' user; removed
/// on drop.
pub struct SeedApp {
    dir: PathBuf,
}

impl SeedApp {
    /// A new app directory with the package installed and `files` copied into it.
    pub fn install(files: &[&str]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let next = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = env::temp_dir().join(format!("sticky-seed-app-{}-{next}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the app directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let app = Self { dir };
        fs::write(app.path("package.json"), "{\"name\":\"seed-app\",\"private\":true}\n").unwrap();
        let output = Command::new("npm")
            .args(["install", "--offline", "--no-audit", "--no-fund"])
            .arg(sticky_session_tarball())
            .current_dir(&app.dir)
            .output()
            .expect("run npm: `cargo xtask test` installs it (apt-get install npm)");
        assert!(
            output.status.success(),
            "npm install: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for file in files {
            fs::copy(example("sticky-session").join(file), app.path(file)).expect("copy");
        }
        app
    }

    /// `PATH` in the app directory.
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }

    /// `PATH` in the app directory, as a string for a command line.
    pub fn arg(&self, path: &str) -> String {
        self.path(path).to_str().expect("a UTF-8 path").to_owned()
    }
}

impl Drop for SeedApp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Asserts that node and the npm package `package` of `examples/DIR` are installed.
pub fn assert_node_package(dir: &str, package: &str) {
    assert!(
        Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
        "node is not installed: `cargo xtask test` installs it (apt-get install nodejs npm)"
    );
    assert!(
        example(dir).join("node_modules").join(package).exists(),
        "{package} is not installed: `cargo xtask test` runs `npm ci` in examples/{dir}"
    );
}

/// Runs `node SCRIPT ARGS` and returns the JSON line it prints; `context` goes into a failure.
pub fn node_json(script: &Path, args: &[&str], context: impl Fn() -> String) -> Value {
    let output = Command::new("node")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("run node {}: {err}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node {} failed: {stdout} {}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr),
        context()
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("node {} printed {stdout:?}: {err}", script.display()))
}

/// `GET PATH` on a new connection from `source` to `server`: the whole response, as text.
pub fn http_text(source: IpAddr, server: SocketAddr, path: &str) -> io::Result<String> {
    let mut stream = crate::connect(source, server)?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: sticky\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// The body of an HTTP response read whole (what follows the blank line).
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}
