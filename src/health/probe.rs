//! One active probe of one endpoint: a TCP connect, or an HTTP request on a fresh connection.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{ActiveCheck, ProbeKind};

/// Probes `addr` once; `Ok` when healthy, else why not.
pub async fn probe(addr: SocketAddr, check: &ActiveCheck, service: &str) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, attempt(addr, check, service)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn attempt(addr: SocketAddr, check: &ActiveCheck, service: &str) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let ProbeKind::Http {
        method,
        path,
        host,
        statuses,
    } = &check.kind
    else {
        return Ok(());
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method.clone())
        .uri(path.as_str())
        .header(http::header::HOST, host.as_deref().unwrap_or(service))
        .header(http::header::USER_AGENT, "outrigger-health-check")
        .body(Empty::<Bytes>::new())
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
}
