//! How one attempt ended: the node's answer, a timeout or a failure turned into the response
//! to give, what counts against the endpoint's health, and whether another endpoint may be
//! tried. The attempt's latency is recorded in one place ([`Latency`]), as tower's load
//! handles do, so that a failed node never looks fast to latency-aware policies.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, Response, StatusCode};
use http_body_util::Either;
use hyper_util::rt::TokioIo;
use outrigger_discovery::error_chain;

use super::headers::regenerate_framing;
use super::{error, strip_hop_by_hop, ProxyBody, Tracked, UpstreamBody};
use crate::balance::load::{EndpointLoad, InFlight};
use crate::health::state::Failure;
use crate::node_client::connect::SendError;
use crate::node_client::h1::ExchangeError;
use crate::node_client::pool::Lease;
use crate::upstream::Upstream;

/// What an attempt's send returned: the node's answer (with the connection lent for hyper's
/// client), a failure, or the try timeout.
pub(super) type SendResult =
    Result<Result<(Response<UpstreamBody>, Option<Lease>), SendError>, tokio::time::error::Elapsed>;

/// Records an attempt's latency in its endpoint's load estimate, once, by how it ended.
pub(super) struct Latency<'a> {
    load: &'a EndpointLoad,
    started: Instant,
    enabled: bool,
}

impl<'a> Latency<'a> {
    /// A record for an attempt started at `started`; it records nothing unless `enabled`
    /// (only latency-aware policies read the estimate).
    pub(super) fn new(load: &'a EndpointLoad, started: Instant, enabled: bool) -> Self {
        Latency {
            load,
            started,
            enabled,
        }
    }

    fn answered(self) {
        if self.enabled {
            self.load.observe(self.started.elapsed());
        }
    }

    /// A failed node counts as at least [`FAILURE_PENALTY`] slow.
    fn failed(self) {
        if self.enabled {
            self.load
                .observe(FAILURE_PENALTY.max(self.started.elapsed()));
        }
    }

    fn timed_out(self, after: Duration) {
        if self.enabled {
            self.load.observe(after);
        }
    }
}

/// What the request path knows of an attempt besides its result.
pub(super) struct Sent<'a> {
    pub(super) addr: SocketAddr,
    pub(super) upstream: &'a Upstream,
    pub(super) method: &'a Method,
    /// The method is idempotent.
    pub(super) may_repeat: bool,
    /// The body can be sent again.
    pub(super) replayable: bool,
    pub(super) latency: Latency<'a>,
    /// The time the attempt had.
    pub(super) budget: Duration,
    /// Counts the request against the endpoint's load until its answer ends.
    pub(super) in_flight: Option<InFlight>,
}

/// How the attempt `sent` ended; `client_upgrade` is the app's side of a protocol switch,
/// taken when the node agrees to it.
pub(super) fn classify(
    result: SendResult,
    sent: Sent<'_>,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
) -> Attempt {
    let Sent {
        addr,
        upstream,
        method,
        may_repeat,
        replayable,
        latency,
        budget,
        in_flight,
    } = sent;
    match result {
        Err(_) => {
            latency.timed_out(budget);
            Attempt {
                response: error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "request-timeout",
                    &format!("{addr} did not answer within {budget:?} (OUTRIGGER_TRY_TIMEOUT / OUTRIGGER_REQUEST_TIMEOUT)"),
                ),
                failure: Some(Failure::Timeout),
                retryable: may_repeat && replayable,
            }
        }
        Ok(Err(e)) => {
            latency.failed();
            upstream_failure(&e, addr, upstream, may_repeat, replayable)
        }
        Ok(Ok((resp, lease))) if lease.is_some() && over_limit(&resp, upstream) => {
            latency.answered();
            let e = SendError::Exchange(ExchangeError::OverLimit(
                "larger than OUTRIGGER_MAX_RESPONSE_HEADERS",
            ));
            upstream_failure(&e, addr, upstream, may_repeat, replayable)
        }
        Ok(Ok((resp, lease))) => {
            latency.answered();
            let retry_on = upstream.settings.retry_on;
            answered(
                resp,
                lease,
                method,
                in_flight,
                client_upgrade,
                (may_repeat && replayable).then_some(retry_on),
            )
        }
    }
}

/// The node answered: its response on its way to the app, with its connection given back once
/// the body is read, or becoming the tunnel of a protocol switch.
fn answered(
    mut resp: Response<UpstreamBody>,
    lease: Option<Lease>,
    method: &Method,
    in_flight: Option<InFlight>,
    client_upgrade: &mut Option<hyper::upgrade::OnUpgrade>,
    retry_on: Option<crate::retry::RetryOn>,
) -> Attempt {
    let status = resp.status();
    // `None`: the request may not be sent again (its method, or its body already gone).
    let retryable = retry_on.is_some_and(|on| on.contains(status.as_u16()));
    let failure = status.is_server_error().then_some(Failure::Status5xx);
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(client_upgrade) = client_upgrade.take() {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
        }
    } else {
        // The app hears Outrigger's own version (RFC 9110 6.2), so an HTTP/1.0 node does not
        // end the app's keep-alive connection.
        *resp.version_mut() = http::Version::HTTP_11;
        strip_hop_by_hop(resp.headers_mut());
        // The lean client's length is the one it reads the body by (it refuses anything
        // ambiguous); hyper's client may keep a length its framing ignored.
        if lease.is_some() {
            regenerate_framing(method, &mut resp);
        }
    }
    Attempt {
        response: resp.map(|body| {
            Either::Left(Tracked {
                body,
                in_flight,
                slot: None,
                lease: lease.filter(|_| !switching),
                ended: false,
                idle: None,
                progressed: false,
                log: None,
            })
        }),
        failure,
        retryable,
    }
}

/// Whether a head read by hyper's client is larger than `OUTRIGGER_MAX_RESPONSE_HEADERS`, as
/// the lean client counts it: hyper bounds only its read buffer, which may hold more than the
/// head. The status line is counted with its standard reason phrase.
fn over_limit(resp: &Response<UpstreamBody>, upstream: &Upstream) -> bool {
    let status_line =
        "HTTP/1.1 200 \r\n".len() + resp.status().canonical_reason().map_or(0, str::len);
    let fields: usize = resp
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    status_line + fields + "\r\n".len() > upstream.connector.limits().max_head_bytes as usize
}

/// How long a failed attempt counts as having taken, for latency-aware policies.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// How one attempt ended.
pub(super) struct Attempt {
    pub(super) response: Response<ProxyBody>,
    /// What counts against the endpoint's health, if anything.
    pub(super) failure: Option<Failure>,
    /// Whether another endpoint may be tried.
    pub(super) retryable: bool,
}

async fn tunnel(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, server) {
        Ok((client, server)) => {
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(server))
                    .await;
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

fn upstream_failure(
    e: &SendError,
    addr: SocketAddr,
    upstream: &Upstream,
    may_repeat: bool,
    replayable: bool,
) -> Attempt {
    if let SendError::PendingConnectsExceeded { .. } = e {
        upstream.metrics.overloaded.increment(1);
        return Attempt {
            response: error(
                StatusCode::SERVICE_UNAVAILABLE,
                "max-pending-connects",
                &format!("service {:?}: {e}", upstream.name),
            ),
            failure: None,
            retryable: false,
        };
    }
    let detail = error_chain(e);
    if e.is_over_limit() {
        // Outrigger's own limit: the node is not at fault, and another would answer alike.
        upstream.metrics.over_limit.increment(1);
        return Attempt {
            response: error(
                StatusCode::BAD_GATEWAY,
                "response-headers-too-large",
                &format!("{addr} answered with a head over Outrigger's limits: {detail}"),
            ),
            failure: None,
            retryable: false,
        };
    }
    if let Some(reason) = e.tls_reason() {
        // Nothing of the request was sent (or it could not be read by the node): another
        // node may take it, as after a refused connection.
        upstream.metrics.tls_errors.increment(1);
        tracing::warn!(service = %upstream.name, endpoint = %addr, %reason, "TLS with the node failed");
        return Attempt {
            response: error(
                StatusCode::BAD_GATEWAY,
                "tls-failed",
                &format!("TLS with {addr} failed: {reason}"),
            ),
            failure: Some(Failure::Tls),
            retryable: replayable && (e.is_connect() || may_repeat),
        };
    }
    if e.is_connect() {
        upstream.metrics.connect_errors.increment(1);
        // Nothing reached the node: any request may go to another one.
        let response = if let SendError::ConnectTimeout(after) = e {
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "connect-timeout",
                &format!(
                    "connecting to {addr} timed out after {after:?} (OUTRIGGER_CONNECT_TIMEOUT)"
                ),
            )
        } else {
            error(
                StatusCode::BAD_GATEWAY,
                "connect-failed",
                &format!("cannot connect to {addr}: {detail}"),
            )
        };
        return Attempt {
            response,
            failure: Some(Failure::Connect),
            retryable: replayable,
        };
    }
    Attempt {
        response: error(
            StatusCode::BAD_GATEWAY,
            "upstream-failed",
            &format!("{addr} failed the request: {detail}"),
        ),
        failure: Some(Failure::Reset),
        retryable: may_repeat && replayable,
    }
}
