//! A minimal HTTP client for tests: one request per call, over a fresh connection, so that
//! every request is seen by the proxy as an app would send it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What came back.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body, as text.
    pub body: String,
}

impl Reply {
    /// The `x-outrigger-error` header, or "".
    pub fn cause(&self) -> &str {
        self.headers
            .get("x-outrigger-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `req` to `to` over HTTP/1.1 and reads the whole answer, within 30 s.
pub async fn send(to: SocketAddr, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let attempt = async {
        let stream = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// An h2c (HTTP/2 with prior knowledge) connection to `to`, as an app opens one to the proxy,
/// and the task driving it (it ends when the connection closes).
pub async fn h2c<B>(
    to: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(to).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    (sender, tokio::spawn(conn))
}

/// `GET path` with `Host: host`, the way an app addresses a service by name.
pub async fn get(to: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    send(to, req).await
}

/// A plain GET of `path` on `to`, for admin endpoints.
pub async fn get_admin(to: SocketAddr, path: &str) -> Result<Reply, String> {
    get(to, "localhost", path).await
}
