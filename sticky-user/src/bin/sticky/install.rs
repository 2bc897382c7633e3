//! `sticky install` and `sticky uninstall`: a named systemd service.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Args;
use sticky_user::{
    config::{RunOptions, System},
    service::{self, ServiceFiles},
};

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Service name: letters, digits, '-' and '_'.
    name: String,
    #[command(flatten)]
    target: Target,
    /// The sticky binary a written unit runs (the package's template unit runs /usr/bin/sticky).
    #[arg(long, value_name = "PATH", default_value = "/usr/local/bin/sticky")]
    bin: PathBuf,
    /// The options of `sticky run` for the service.
    #[command(flatten)]
    run: RunOptions,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Service name.
    name: String,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
struct Target {
    /// Work under this root directory instead of / (then systemctl is not called).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Print what would be written or removed, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Target {
    /// Whether systemctl should be called: the real root, with systemd running.
    fn systemd(&self) -> bool {
        self.root == Path::new("/") && Path::new("/run/systemd/system").exists()
    }
}

pub fn install(args: InstallArgs) -> anyhow::Result<()> {
    let files = ServiceFiles::new(&args.name, &args.target.root)?;
    let input = args.run.with_file()?;
    // Validate now, as the service would at start.
    let config = sticky_user::config::RunConfig::resolve(input.clone(), &System)?;
    sticky_user::spawn::Spawner::new(&config, &[])?.check()?;
    let config_text = service::config_file(&files, &input)?;
    let unit =
        files.unit.as_ref().map(|path| (path, service::unit_file(&files, &config, &args.bin)));
    if args.target.dry_run {
        println!("# {}\n{config_text}", files.config.display());
        match &unit {
            Some((path, text)) => println!("# {}\n{text}", path.display()),
            None => println!("# {} runs it", service::TEMPLATE_UNIT),
        }
        return Ok(());
    }
    // The configuration may name users, paths and environment: readable by root only.
    service::write_new(&files, &files.config, &config_text, 0o600)?;
    match &unit {
        Some((path, text)) => {
            if let Err(err) = service::write_new(&files, path, text, 0o644) {
                let _ = std::fs::remove_file(&files.config);
                return Err(err.into());
            }
            println!("wrote {} and {}", files.config.display(), path.display());
        }
        None => println!("wrote {} for {}", files.config.display(), service::TEMPLATE_UNIT),
    }
    let unit = files.unit_name();
    if args.target.systemd() {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", &unit])?;
        println!("enabled {unit}: start it with `systemctl start {unit}`");
    } else {
        println!(
            "systemd is not running here: run `systemctl daemon-reload && systemctl enable --now {unit}` where it is"
        );
    }
    Ok(())
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let files = ServiceFiles::new(&args.name, &args.target.root)?;
    let unit = files.unit_name();
    if args.target.dry_run {
        for path in files.unit.iter().chain([&files.config]).filter(|p| p.exists()) {
            println!("would remove {}", path.display());
        }
        return Ok(());
    }
    if args.target.systemd() && files.installed() {
        systemctl(&["disable", "--now", &unit])?;
    }
    service::remove(&files)?;
    if args.target.systemd() {
        systemctl(&["daemon-reload"])?;
    }
    let config = files.config.display();
    match files.unit {
        Some(_) => println!("removed {unit} and {config}"),
        None => println!("disabled {unit} and removed {config}"),
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl").args(args).status().context("cannot run systemctl")?;
    if !status.success() {
        bail!("`systemctl {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
