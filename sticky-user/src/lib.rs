//! sticky: sticky sessions for multi-process servers, decided in the kernel.
//!
//! The loader side is a pipeline, each stage in its own module:
//! [`config`] validates what the user asked for, [`privileges`] checks the process may do it,
//! [`listeners`] opens one `SO_REUSEPORT` socket per worker slot, [`table`] and [`dispatch`]
//! load the eBPF program and fill its maps, and [`supervisor`] runs one worker per slot (started
//! by [`spawn`]) and answers the [`control`] socket. The worker side of the socket-activation
//! protocol is in [`worker`]; [`demo`] is the built-in demo server.
#![deny(missing_docs)]

pub mod config;
pub mod control;
pub mod demo;
pub mod dispatch;
pub mod handoff;
pub mod listeners;
pub mod metrics;
pub mod notify;
pub mod path_error;
pub mod privileges;
pub mod seed;
pub mod service;
pub mod spawn;
pub mod supervisor;
pub mod table;
pub mod worker;
