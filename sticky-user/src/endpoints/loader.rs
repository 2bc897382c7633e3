//! The running loader, as the endpoints see it.

use std::{future::Future, sync::Arc};

use super::protocol::{Request, Response, Status};

/// What the endpoints ask of the running loader; the supervisor implements it.
pub(crate) trait Loader: Send + Sync + 'static {
    /// The current state, for `sticky status` and `/metrics`.
    fn status(&self) -> Result<Status, String>;
    /// Carries out a control request.
    fn handle(self: Arc<Self>, request: Request) -> impl Future<Output = Response> + Send;
    /// Carries out `sticky upgrade`, answering on `reply` (or handing it to the new image,
    /// which answers).
    fn upgrade(self: Arc<Self>, reply: tokio::net::UnixStream) -> impl Future<Output = ()> + Send;
}
