//! The Rust example worker builds from `sticky-worker` alone: with stable cargo, no bpf-linker
//! on PATH, a fresh target directory, and no aya, tokio or sticky-user in its dependencies.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::fs::{MetadataExt as _, lchown, symlink},
    path::{Path, PathBuf},
    process::{Command, Output},
};

const EXAMPLE: &str = "sticky-example-rust";

/// Crates a worker must not pull in: the loader, its eBPF build and its runtime.
const FORBIDDEN: [&str; 5] = ["sticky-user", "aya", "aya-build", "tokio", "clap"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// `name` in the first of `dirs` that has it.
fn find_in(dirs: impl IntoIterator<Item = PathBuf>, name: &str) -> Option<PathBuf> {
    dirs.into_iter().map(|dir| dir.join(name)).find(|path| path.is_file())
}

/// A `rustc` to ask for the sysroot: next to `$CARGO`, on PATH, or in the usual cargo home.
fn any_rustc() -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(cargo) = env::var_os("CARGO") {
        dirs.extend(Path::new(&cargo).parent().map(Path::to_owned));
    }
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    dirs.extend(env::var_os("CARGO_HOME").map(|home| PathBuf::from(home).join("bin")));
    dirs.extend(env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin")));
    find_in(dirs, "rustc").unwrap_or_else(|| {
        panic!("cannot find rustc: not next to $CARGO, on PATH, nor in the cargo home's bin")
    })
}

/// The real `cargo` and `rustc` of the workspace's toolchain (not rustup's proxies, which may
/// put `~/.cargo/bin`, where bpf-linker is, back on PATH).
fn toolchain() -> (PathBuf, PathBuf) {
    let rustc = any_rustc();
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", rustc.display()));
    assert!(output.status.success(), "{} --print sysroot failed: {output:?}", rustc.display());
    let bin =
        PathBuf::from(String::from_utf8(output.stdout).expect("UTF-8 sysroot").trim()).join("bin");
    let real = |name: &str| {
        find_in([bin.clone()], name)
            .unwrap_or_else(|| panic!("no {name} in the toolchain's {}", bin.display()))
    };
    (real("cargo"), real("rustc"))
}

/// A directory holding only `cargo` and `rustc`, and a PATH of it plus /usr/bin and /bin.
fn path_without_bpf_linker(dir: &Path) -> OsString {
    let (cargo, rustc) = toolchain();
    let bin = dir.join("bin");
    let _ = fs::remove_dir_all(&bin);
    fs::create_dir_all(&bin).expect("create the tool directory");
    symlink(&cargo, bin.join("cargo")).expect("link cargo");
    symlink(&rustc, bin.join("rustc")).expect("link rustc");
    let dirs = [bin, PathBuf::from("/usr/bin"), PathBuf::from("/bin")];
    for dir in &dirs {
        assert!(
            !dir.join("bpf-linker").exists(),
            "{} has bpf-linker: this test cannot hide it",
            dir.display()
        );
    }
    env::join_paths(dirs).expect("PATH")
}

/// Runs `cargo ARGS` in the workspace with `path` as PATH and `target` as the target dir.
fn cargo(path: &OsString, target: &Path, args: &[&str]) -> Output {
    let cargo = target.join("bin/cargo");
    Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", target)
        .env("RUSTC", target.join("bin/rustc"))
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO")
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", cargo.display()))
}

/// Hands `path` and everything under it to `uid:gid` (the tests run as root, the workspace
/// usually belongs to someone else, who should still be able to `cargo clean`).
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let _ = lchown(path, Some(uid), Some(gid));
    if path.is_dir() && !path.is_symlink() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

#[test]
fn the_rust_example_builds_from_sticky_worker_alone() {
    let target_dir = workspace_root().join("target");
    fs::create_dir_all(&target_dir).expect("create target/");
    let target = target_dir.join("worker-crate-check");
    let path = path_without_bpf_linker(&target);

    let built = cargo(&path, &target, &["build", "--locked", "--package", EXAMPLE]);
    let owner = fs::metadata(&target_dir).expect("target/");
    chown_tree(&target, owner.uid(), owner.gid());
    assert!(
        built.status.success(),
        "`cargo build --package {EXAMPLE}` failed with stable cargo and no bpf-linker on PATH \
         (PATH={}): the example must build from sticky-worker alone\n{}",
        path.to_string_lossy(),
        String::from_utf8_lossy(&built.stderr)
    );

    let tree = cargo(
        &path,
        &target,
        &["tree", "--locked", "--package", EXAMPLE, "--edges", "normal,build", "--prefix", "none"],
    );
    assert!(tree.status.success(), "cargo tree failed:\n{}", String::from_utf8_lossy(&tree.stderr));
    let tree = String::from_utf8(tree.stdout).expect("UTF-8 cargo tree");
    let crates: Vec<&str> =
        tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(
        crates.contains(&"sticky-worker"),
        "sticky-worker is not in the example's tree:\n{tree}"
    );
    let forbidden: Vec<&str> =
        crates.iter().copied().filter(|name| FORBIDDEN.contains(name)).collect();
    assert!(
        forbidden.is_empty(),
        "the example's dependency graph has {forbidden:?}, which a worker must not need:\n{tree}"
    );
}
