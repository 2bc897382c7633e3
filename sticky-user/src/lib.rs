//! sticky: sticky sessions for multi-process servers, decided in the kernel.
//!
//! `sticky run` is a pipeline, data flowing one way: [`config`] turns the options into one
//! validated configuration; [`startup`] checks privileges, opens the listeners, sets up the
//! dispatch (the eBPF program in `kernel`, the loader's own accept loop in `handoff`, or
//! plain SO_REUSEPORT; trusted proxies' headers are read in `client_address`) and binds the endpoints; the supervisor then runs one worker per slot
//! and serves the [`control`] socket, metrics and sd_notify. [`service`] writes the systemd
//! unit, [`spawn`] holds the worker shim's entry points, and [`demo`] is the built-in demo
//! worker. The worker side of the protocol is the `sticky-worker` crate.
#![deny(missing_docs)]

mod accept;
mod chain;
mod client_address;
pub mod config;
pub mod demo;
mod dir_safety;
mod dispatch;
mod endpoints;
pub mod fd_store;
mod handoff;
pub mod identity;
mod kernel;
pub mod limits;
mod listeners;
pub mod path_error;
mod privileges;
mod seed;
pub mod service;
pub mod spawn;
pub mod startup;
mod supervisor;
pub mod sync;
pub mod upgrade;

pub use endpoints::control;
pub use kernel::table;
