//! Kernel dispatch: the eBPF program attached to each listen address's reuseport group
//! ([`Dispatcher`], which owns the typed map handles), the lookup [`table`] it reads, and the
//! program's own log (`logs`: aya-log).

mod counters;
mod dispatcher;
mod error;
mod generations;
mod logs;
mod map_fds;
pub mod table;

pub use counters::Counters;
pub use dispatcher::{Dispatcher, DispatcherFds};
pub use error::DispatchError;
