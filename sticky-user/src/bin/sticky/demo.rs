//! `sticky demo`: the built-in worker.

use anyhow::Context as _;
use sticky_user::{demo, worker};

pub fn run() -> anyhow::Result<()> {
    let (slot, _) = worker::slot()?;
    let listeners = worker::listeners()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the async runtime")?
        .block_on(demo::serve(listeners, slot))
        .context("demo worker stopped")
}
