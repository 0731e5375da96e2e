//! Thread-per-core serving: each of the `OUTRIGGER_WORKER_THREADS` workers is a thread
//! running its own single-threaded runtime, and serves the connections handed to it from start
//! to end. Requests never run on the main runtime, one worker included.
//!
//! A work-stealing runtime moves a request's tasks between threads and wakes other cores on
//! every request; here a client connection, the upstream connections it uses (kept per thread
//! by `node_client::pool`) and all their tasks stay on one thread (bench/HISTORY.md has the
//! numbers). The control plane (discovery, health checks, admin) and the accept loops run on
//! the main runtime: accepting happens once per connection, so handing sockets over costs
//! nothing per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::proxy::{AppConnection, Proxy};
use crate::server::{ConnectionLimits, ConnectionServer};
use crate::upstream::Upstream;
use crate::write_batch::Flusher;

/// An accepted connection on its way to a worker.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// The service of a dedicated listener; `None` when the request names the service.
    dedicated: Option<Arc<Upstream>>,
    open: OpenConnection,
}

/// Counts one connection against its worker until the connection closes.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Worker {
    inbox: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
    done: oneshot::Receiver<()>,
}

/// Whether workers are kept on CPUs of their own (`OUTRIGGER_PIN_WORKERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// With exactly one worker per CPU the process may use, worker i stays on the i-th of
    /// them; with any other count the kernel places the workers. Unpinned, the kernel at times
    /// puts two workers on one CPU while the other runs the apps, and every request on both
    /// waits (bench/HISTORY.md: two workers' p99 5.4-7.0 ms unpinned, 3.6-4.6 ms pinned).
    Auto,
    /// The kernel places the workers.
    Off,
}

/// The CPU each of `count` workers stays on, given the CPUs the process may use.
pub fn worker_cpus(count: usize, allowed: &[usize], pinning: Pinning) -> Vec<Option<usize>> {
    match pinning {
        Pinning::Auto if count == allowed.len() => allowed.iter().copied().map(Some).collect(),
        _ => vec![None; count],
    }
}

/// The proxy's worker threads.
pub struct Workers {
    workers: Vec<Worker>,
    /// Open app connections at most, over all workers (`OUTRIGGER_MAX_CONNECTIONS`).
    max_connections: usize,
}

impl Workers {
    /// Starts `count` workers serving `proxy`, each connection within `limits`. After `stop`
    /// they take no more connections and give open requests up to `drain` to finish.
    pub fn start(
        count: usize,
        pinning: Pinning,
        proxy: Arc<Proxy>,
        stop: CancellationToken,
        drain: Duration,
        limits: ConnectionLimits,
    ) -> std::io::Result<Self> {
        let allowed = match pinning {
            Pinning::Off => Vec::new(),
            Pinning::Auto => crate::affinity::allowed_cpus().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the CPUs this process may use; workers are not pinned");
                Vec::new()
            }),
        };
        let cpus = worker_cpus(count, &allowed, pinning);
        if cpus.iter().any(Option::is_some) {
            tracing::info!(workers = count, cpus = ?allowed, "each worker stays on a CPU of its own (OUTRIGGER_PIN_WORKERS=auto)");
        }
        let mut workers = Vec::with_capacity(count);
        for (i, cpu) in cpus.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (inbox, handoffs) = mpsc::unbounded_channel();
            let (finished, done) = oneshot::channel();
            let proxy = proxy.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("outrigger-worker-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = crate::affinity::pin_current_thread(cpu) {
                            tracing::warn!(worker = i, cpu, error = %e, "cannot pin the worker; the kernel places it");
                        }
                    }
                    runtime.block_on(serve(handoffs, proxy, stop, drain, limits));
                    let _ = finished.send(());
                })?;
            workers.push(Worker {
                inbox,
                open: Arc::new(AtomicUsize::new(0)),
                done,
            });
        }
        Ok(Workers {
            workers,
            max_connections: limits.max_connections,
        })
    }

    /// Gives an accepted connection to the worker with the fewest open connections, or closes
    /// it when `OUTRIGGER_MAX_CONNECTIONS` are open already.
    pub fn hand_off(&self, stream: TcpStream, peer: SocketAddr, dedicated: Option<Arc<Upstream>>) {
        let open: usize = self
            .workers
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .sum();
        if open >= self.max_connections {
            metrics::counter!("outrigger_connections_refused_total").increment(1);
            tracing::debug!(%peer, open, "connection refused: OUTRIGGER_MAX_CONNECTIONS are open");
            return;
        }
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            return;
        };
        // Leaves the main runtime's reactor; the worker registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand an accepted connection to a worker");
                return;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenConnection(worker.open.clone());
        // A worker only stops receiving after `stop`, when the connection is unwanted anyway.
        let _ = worker.inbox.send(Handoff {
            stream,
            peer,
            dedicated,
            open,
        });
    }

    /// Waits until every worker has drained and stopped.
    pub async fn join(self) {
        for worker in self.workers {
            drop(worker.inbox);
            let _ = worker.done.await;
        }
    }
}

/// One worker's loop: serve handed-over connections until `stop`, then drain.
async fn serve(
    mut handoffs: mpsc::UnboundedReceiver<Handoff>,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
    drain: Duration,
    limits: ConnectionLimits,
) {
    // The worker's own handle: requests clone it, and a reference count shared by all workers
    // would bounce between cores on every request.
    let proxy = Arc::new(Proxy::clone(&proxy));
    let server = ConnectionServer::new(limits);
    let sweeper_stop = CancellationToken::new();
    let sweeper = tokio::spawn(crate::node_client::pool::sweep(sweeper_stop.clone()));
    // Writes wait for the end of each turn (write_batch); this task sends them.
    let flusher = tokio::spawn(Flusher::install());
    loop {
        let handoff = tokio::select! {
            _ = stop.cancelled() => break,
            handoff = handoffs.recv() => match handoff {
                Some(handoff) => handoff,
                None => break,
            },
        };
        let stream = match TcpStream::from_std(handoff.stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(peer = %handoff.peer, error = %e, "worker cannot take a connection");
                continue;
            }
        };
        let proxy = proxy.clone();
        let app = Arc::new(AppConnection::new(handoff.peer, handoff.dedicated));
        server.serve(
            stream,
            handoff.peer,
            move |req| {
                let proxy = proxy.clone();
                let app = app.clone();
                async move { Ok::<_, Infallible>(proxy.serve(req, &app).await) }
            },
            handoff.open,
        );
    }
    server.drain(drain, "proxy worker").await;
    Flusher::close();
    let _ = flusher.await;
    sweeper_stop.cancel();
    let _ = sweeper.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_pinned_only_one_per_allowed_cpu() {
        assert_eq!(
            worker_cpus(2, &[2, 5], Pinning::Auto),
            vec![Some(2), Some(5)]
        );
        // Fewer or more workers than CPUs: a worker of its own per CPU is not possible.
        assert_eq!(worker_cpus(1, &[0, 1], Pinning::Auto), vec![None]);
        assert_eq!(worker_cpus(3, &[0, 1], Pinning::Auto), vec![None; 3]);
        assert_eq!(worker_cpus(2, &[0, 1], Pinning::Off), vec![None; 2]);
    }
}
