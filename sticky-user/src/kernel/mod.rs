//! Kernel dispatch: the eBPF program attached to each listen address's reuseport group
//! ([`Dispatcher`], which owns the typed map handles), and the lookup [`table`] it reads.

mod dispatcher;
mod error;
mod map_fds;
pub mod table;

pub use dispatcher::{Counters, Dispatcher, DispatcherFds};
pub use error::DispatchError;
