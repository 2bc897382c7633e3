//! Scaling: slots added (sockets, workers, then the table) or removed (the table first, then
//! the socket arrays, then their workers stop and their queues migrate; with `--quic`, they
//! drain first).

use sticky_common::MAX_SLOTS;
use tracing::info;

use super::{
    Supervisor, SupervisorError,
    processes::{start_worker, terminate},
};
use crate::dispatch::Dispatch;

impl Supervisor {
    /// Sets the number of worker slots to `workers`. New slots get new sockets and workers and
    /// take about 1/N of the clients; removed slots (the highest) leave the table first, so
    /// only their clients move, then their workers stop and their queues migrate.
    pub async fn scale(&self, workers: u32) -> Result<String, SupervisorError> {
        if !(1..=MAX_SLOTS).contains(&workers) {
            return Err(SupervisorError::Workers(workers));
        }
        let _operation = self.operation().await?;
        self.resize(workers).await
    }

    /// The body of [`Supervisor::scale`], for a caller that holds the operation lock.
    pub(super) async fn resize(&self, workers: u32) -> Result<String, SupervisorError> {
        if !(1..=MAX_SLOTS).contains(&workers) {
            return Err(SupervisorError::Workers(workers));
        }
        if matches!(self.state().dispatch, Dispatch::Userspace) {
            return Err(SupervisorError::Unsupported("scaling"));
        }
        crate::limits::fits(&self.launch.config, workers)?;
        let retiring = {
            let mut state = self.state();
            if state.stopping {
                return Err(SupervisorError::Stopping);
            }
            if workers > state.slots.len() as u32 {
                for slot in state.add_slots(workers)? {
                    start_worker(&self.shared, &mut state, slot);
                }
                state.update_table()?;
                info!(workers, "scaled up");
                Vec::new()
            } else {
                let grace = state.policy.grace_period;
                let mut retiring = Vec::new();
                for (slot, worker) in state.remove_slots(workers)? {
                    // With `--quic`, the slot's socket drains at its draining index.
                    if state.generation(slot).is_some() {
                        self.drain_previous(&mut state, slot, worker);
                    } else if let Some(worker) = worker {
                        terminate(&worker, grace);
                        retiring.push(worker);
                    }
                }
                info!(workers, "scaled down");
                retiring
            }
        };
        for worker in &retiring {
            worker.wait().await;
        }
        Ok(format!("{workers} workers"))
    }
}
