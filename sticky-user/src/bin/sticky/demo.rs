//! `sticky demo`: the built-in worker.

use anyhow::Context as _;
use sticky_user::demo;
use sticky_worker::{handoff_socket, listeners, slot};

pub fn run() -> anyhow::Result<()> {
    let (slot, _) = slot()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the async runtime")?;
    let served = match handoff_socket()? {
        Some(handoff) => runtime.block_on(demo::serve_handoff(handoff, slot)),
        None => runtime.block_on(demo::serve(listeners()?, slot)),
    };
    served.context("demo worker stopped")
}
