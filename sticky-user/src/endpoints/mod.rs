//! What a running loader serves besides its workers: the [`control`] socket (`sticky status`,
//! `reload`, `scale`, `stop`), the Prometheus [`metrics`] endpoint, and systemd's readiness
//! protocol ([`systemd`]).
//!
//! The endpoints know the loader only as a [`Loader`]: they depend on nothing of the
//! supervisor, which implements it.

mod connections;
pub mod control;
pub(crate) mod gate;
mod loader;
pub(crate) mod metrics;
mod protocol;
pub(crate) mod readiness;
pub(crate) mod systemd;

pub(crate) use loader::Loader;
