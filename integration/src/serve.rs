//! The accept loop the test servers share (upstream, Consul and Eureka emulators).

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on `listener` for ever and serves each with `connection`.
///
/// Connections live in a set owned by this future, so aborting the task that runs it drops
/// them all, as a killed server would: no keep-alive connection keeps answering after stop.
pub async fn accept_connections<F, Fut>(listener: TcpListener, connection: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(stream));
    }
}
