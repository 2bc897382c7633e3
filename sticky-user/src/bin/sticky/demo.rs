//! `sticky demo`: the built-in worker.

use anyhow::Context as _;
use sticky_user::demo;
use sticky_worker::{inherited, notify, ready, slot, watchdog_interval};

pub fn run() -> anyhow::Result<()> {
    let (slot, _) = slot()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")?;
    if let Some(interval) = watchdog_interval() {
        // On the serving thread: a blocked event loop stops feeding the watchdog too.
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(interval / 2).await;
                let _ = notify("WATCHDOG=1");
            }
        });
    }
    let inherited = inherited()?;
    ready().context("cannot notify readiness")?;
    runtime.block_on(demo::serve(inherited, slot)).context("demo worker stopped")
}
