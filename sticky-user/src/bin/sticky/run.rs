//! `sticky run`: listeners, dispatch program and workers, until SIGINT/SIGTERM or `sticky stop`.

use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use sticky_user::{
    config::RunOptions,
    spawn::Spawner,
    startup::{self, Reconfigure},
};
use tracing::info;

/// `sticky check`: validates the options and says what `run` would do.
pub fn check(options: RunOptions) -> anyhow::Result<()> {
    let source = options.config.clone();
    let config = options.validate()?;
    Spawner::new(&config, &[])?.check()?;
    let listen: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
    let command =
        config.command.as_ref().map_or("sticky demo".into(), |c| c.program.display().to_string());
    let user = config.credentials.as_ref().map_or("root".into(), |c| c.user.clone());
    let source = source.map_or("options".into(), |path| path.display().to_string());
    println!(
        "{source}: ok: {} workers ({command}, as {user}) on {}",
        config.workers,
        listen.join(", ")
    );
    Ok(())
}

/// `sticky run`: starts, runs until stopped, logs the final counters.
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    let config = options.clone().validate()?;
    // A reload reads the file again, with the same flags on top, and applies the worker count
    // only if it changed there (so it does not undo a `sticky scale`).
    let reconfigure = options.config.is_some().then(|| {
        let configured = Mutex::new(config.workers);
        let reconfigure: Reconfigure = Box::new(move || {
            let workers = options.clone().validate().map_err(|err| err.to_string())?.workers;
            let mut configured = configured.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = *configured != workers;
            *configured = workers;
            Ok(changed.then_some(workers))
        });
        reconfigure
    });
    let started = startup::start(config, reconfigure)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    for (address, counters) in runtime.block_on(started.run())? {
        info!(
            listen = %address,
            selected = ?counters.selected,
            fallback = counters.fallback,
            passed = counters.passed,
            unreadable = counters.unreadable,
            "dispatch counters"
        );
    }
    info!("stopped");
    Ok(())
}
