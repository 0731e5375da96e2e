//! One active probe of one endpoint: a TCP connect, or an HTTP request on a fresh connection
//! made the way requests reach the node (TLS, HTTP/2 as the service's settings or the
//! registry's `secure` flag say).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{Either, Full};
use outrigger_discovery::EndpointMeta;
use tokio::net::TcpStream;

use super::{ActiveCheck, ProbeKind};
use crate::node_client::connect::NodeConn;
use crate::node_client::pool::absolute_uri;
use crate::upstream::Upstream;

/// Probes the node at `addr` (labels `meta`) of `upstream` once; `Ok` when healthy, else why
/// not.
pub async fn probe(
    upstream: &Upstream,
    addr: SocketAddr,
    meta: &EndpointMeta,
    check: &ActiveCheck,
) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, attempt(upstream, addr, meta, check)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn attempt(
    upstream: &Upstream,
    addr: SocketAddr,
    meta: &EndpointMeta,
    check: &ActiveCheck,
) -> Result<(), String> {
    let ProbeKind::Http {
        method,
        path,
        host,
        statuses,
    } = &check.kind
    else {
        return TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}"));
    };
    let (connector, host_name) = upstream.connector_for(meta).map_err(str::to_string)?;
    let conn = connector
        .connect(addr, host_name)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(path.as_str())
        .header(
            http::header::HOST,
            host.as_deref().unwrap_or(&upstream.name),
        )
        .header(http::header::USER_AGENT, "outrigger-health-check")
        .body(Either::Right(Full::new(Bytes::new())))
        .map_err(|e| format!("request: {e}"))?;
    let resp = match conn {
        NodeConn::Http1(mut sender) => sender.send_request(req).await,
        NodeConn::H2(mut sender) => {
            absolute_uri(&mut req, connector.is_tls(), addr);
            sender.send_request(req).await
        }
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    if statuses.iter().any(|r| r.contains(&status)) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Probes `addr` directly: a TCP connect, or an HTTP/1.1 request on a plain connection, with
/// `host` as the Host when the check names none. For the local app that Outrigger registers
/// (`register`), which is no service's node.
pub async fn probe_direct(addr: SocketAddr, check: &ActiveCheck, host: &str) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let ProbeKind::Http {
            method,
            path,
            host: named,
            statuses,
        } = &check.kind
        else {
            return Ok(());
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method.clone())
            .uri(path.as_str())
            .header(http::header::HOST, named.as_deref().unwrap_or(host))
            .header(http::header::USER_AGENT, "outrigger-health-check")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        if statuses.iter().any(|r| r.contains(&status)) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}
