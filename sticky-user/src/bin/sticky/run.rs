//! `sticky run`: listeners, dispatch program and workers, until SIGINT/SIGTERM or `sticky stop`.

use anyhow::Context as _;
use sticky_user::{
    config::{Launch, RunOptions},
    fd_store::Inherited,
    spawn::Spawner,
    startup::{self, Started},
    upgrade,
};
use tracing::info;

use crate::log_filter::LogFilter;

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
    let proxies = config.client_address.as_ref().map_or(String::new(), |proxies| {
        let trusted: Vec<String> = proxies.trusted.iter().map(ToString::to_string).collect();
        let source = clap::ValueEnum::to_possible_value(&proxies.source)
            .map_or(String::new(), |value| value.get_name().to_owned());
        format!("; the client's address from {source} of {}", trusted.join(", "))
    });
    println!(
        "{source}: ok: {} workers ({command}, as {user}) on {}{proxies}",
        config.workers,
        listen.join(", ")
    );
    Ok(())
}

/// `sticky run`: starts, runs until stopped, logs the final counters.
pub fn run(options: RunOptions, log_filter: &LogFilter) -> anyhow::Result<()> {
    // SAFETY: no thread runs yet, and nothing has taken the fds systemd passed.
    let inherited = unsafe { Inherited::from_environment() }
        .context("cannot read the sockets systemd passed (LISTEN_FDS)")?;
    let config = options.clone().validate()?;
    log_filter.set_level(config.log_level.into());
    serve(startup::start(Launch::new(config, options), inherited)?)
}

/// `sticky resume --probe`: what an upgrading loader asks before it hands over. The answer is
/// printed even when the offered record cannot be taken (then the exit status says so).
pub fn probe() -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&upgrade::ProbeAnswer::of_this_binary())?);
    upgrade::check_record(std::io::stdin().lock()).context("cannot take this loader's state")
}

/// `sticky resume --state-fd FD [--rollback REASON]`: the new image of an upgrading loader
/// takes over (or hands the loader back); after a rollback, the old image takes over again.
pub fn resume(
    state_fd: i32,
    rollback: Option<String>,
    log_filter: &LogFilter,
) -> anyhow::Result<()> {
    // SAFETY: `sticky upgrade` (or a rollback) executes this with the record it wrote at
    // `state_fd` and the fds it names, which nothing in this fresh image owns yet.
    let started =
        unsafe { startup::resume(state_fd, rollback) }.context("cannot take over the loader")?;
    log_filter.set_level(started.log_level.into());
    serve(started)
}

/// Runs a started (or resumed) loader until it stops, and logs the final counters.
pub fn serve(started: Started) -> anyhow::Result<()> {
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
