//! How the workers get their connections, chosen at start and carried to the end.

use crate::{config::DispatchMode, kernel::Dispatcher};

/// The dispatch set up at start, with what each mode keeps.
pub enum Dispatch {
    /// sticky's eBPF program: one attached [`Dispatcher`] per listen address.
    Kernel(Vec<Dispatcher>),
    /// The loader accepts and passes each connection on (through the supervisor's handoff).
    Userspace,
    /// None: plain SO_REUSEPORT, not sticky (`--dispatch none`).
    None,
}

impl Dispatch {
    /// The mode, as the options name it.
    pub fn mode(&self) -> DispatchMode {
        match self {
            Self::Kernel(_) => DispatchMode::Kernel,
            Self::Userspace => DispatchMode::Userspace,
            Self::None => DispatchMode::None,
        }
    }

    /// The attached programs (none unless kernel dispatch).
    pub fn dispatchers(&self) -> &[Dispatcher] {
        match self {
            Self::Kernel(dispatchers) => dispatchers,
            _ => &[],
        }
    }

    /// The attached programs, to update their maps.
    pub fn dispatchers_mut(&mut self) -> &mut [Dispatcher] {
        match self {
            Self::Kernel(dispatchers) => dispatchers,
            _ => &mut [],
        }
    }
}
