//! The lean client against raw-socket nodes on loopback.

use super::*;
use http_body_util::BodyExt;
use std::sync::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

static RELEASED: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

// The release callback's type is the client's: connections travel boxed.
#[allow(clippy::boxed_local)]
fn remember(addr: SocketAddr, _conn: Box<Connection>) {
    RELEASED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(addr);
}

fn released(addr: SocketAddr) -> bool {
    RELEASED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&addr)
}

/// A node that reads one request head and answers with `answer`, written in pieces
/// `split` bytes apart (to cross read boundaries), then keeps the connection open until
/// the client closes it, or closes it if `close` is set.
async fn node(answer: &'static [u8], split: usize, close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        for piece in answer.chunks(split.max(1)) {
            let _ = s.write_all(piece).await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        if !close {
            let _ = s.read(&mut byte).await;
        }
    });
    addr
}

/// The response head, its body and its trailers.
pub(super) type Got = (Response<()>, Bytes, Option<HeaderMap>);

/// One request to `addr` on a new connection, its answer read to the end (shared with the
/// differential test).
pub(super) async fn get(addr: SocketAddr, method: Method) -> Result<Got, ExchangeError> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let headers = HeaderMap::new();
    let path = PathAndQuery::from_static("/");
    let host = HeaderValue::from_static("node");
    let body = Bytes::new();
    let req = Outgoing {
        method: &method,
        path: &path,
        headers: &headers,
        host: Some(&host),
        body: &body,
    };
    let resp = Connection::new(stream, HeadLimits::default())
        .exchange(req, remember, addr)
        .await?;
    let (head, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((
        Response::from_parts(head, ()),
        collected.to_bytes(),
        trailers,
    ))
}

#[tokio::test]
async fn a_chunked_body_split_across_reads_is_decoded_with_its_trailers_and_the_connection_kept() {
    let addr = node(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\ngrpc-status:0\r\n\r\n",
        7,
        false,
    )
    .await;
    let (head, body, trailers) = get(addr, Method::GET).await.expect("a response");
    assert_eq!(head.status(), 200);
    assert_eq!(&body[..], b"hello, world");
    let trailers = trailers.expect("the trailer fields are passed on");
    assert_eq!(trailers["x-trailer"], "t");
    assert_eq!(trailers["grpc-status"], "0");
    assert!(
        released(addr),
        "a finished keep-alive body returns its connection"
    );
}

#[tokio::test]
async fn informational_answers_are_skipped_and_a_length_body_read() {
    let addr = node(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nabc",
        5,
        false,
    )
    .await;
    let (head, body, _) = get(addr, Method::GET).await.expect("a response");
    assert_eq!(head.status(), 201);
    assert_eq!(&body[..], b"abc");
    assert!(released(addr));
}

#[tokio::test]
async fn a_body_without_length_runs_until_close_and_the_connection_is_not_kept() {
    let addr = node(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", 4, true).await;
    let (_, body, _) = get(addr, Method::GET).await.expect("a response");
    assert_eq!(&body[..], b"until the end");
    assert!(!released(addr));
}

#[tokio::test]
async fn connection_close_is_honoured_and_head_has_no_body() {
    let closing = node(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        100,
        false,
    )
    .await;
    let (_, body, _) = get(closing, Method::GET).await.expect("a response");
    assert_eq!(&body[..], b"ok");
    assert!(!released(closing), "connection: close must not be reused");

    let head = node(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
        100,
        false,
    )
    .await;
    let (resp, body, _) = get(head, Method::HEAD).await.expect("a response");
    assert_eq!(resp.headers()[CONTENT_LENGTH], "1000");
    assert!(body.is_empty());
    assert!(released(head));
}

#[tokio::test]
async fn a_body_cut_short_and_a_malformed_head_are_errors() {
    let short = node(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
        100,
        true,
    )
    .await;
    assert!(matches!(
        get(short, Method::GET).await,
        Err(ExchangeError::Closed(_))
    ));
    let garbage = node(b"SMTP ready\r\n\r\n", 100, true).await;
    assert!(matches!(
        get(garbage, Method::GET).await,
        Err(ExchangeError::Malformed(_))
    ));
    let conflicting = node(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        100,
        true,
    )
    .await;
    assert!(matches!(
        get(conflicting, Method::GET).await,
        Err(ExchangeError::Malformed(_))
    ));
    let bad_trailer = node(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nno colon here\r\n\r\n",
        100,
        true,
    )
    .await;
    assert!(matches!(
        get(bad_trailer, Method::GET).await,
        Err(ExchangeError::Malformed("invalid trailer field"))
    ));
}

#[test]
fn the_request_carries_the_node_host_and_an_exact_length() {
    let mut headers = HeaderMap::new();
    headers.insert(HOST, HeaderValue::from_static("orders"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
    headers.insert("x-a", HeaderValue::from_static("1"));
    let path = PathAndQuery::from_static("/p?q=1");
    let host = HeaderValue::from_static("127.0.0.1:9");
    let body = Bytes::from_static(b"data");
    let mut out = Vec::new();
    encode(
        &Outgoing {
            method: &Method::POST,
            path: &path,
            headers: &headers,
            host: Some(&host),
            body: &body,
        },
        &mut out,
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "POST /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: 127.0.0.1:9\r\ncontent-length: 4\r\n\r\ndata"
    );
}

thread_local! {
    static KEPT: std::cell::RefCell<Option<Box<Connection>>> = const { std::cell::RefCell::new(None) };
}

fn keep(_: SocketAddr, conn: Box<Connection>) {
    KEPT.with_borrow_mut(|k| *k = Some(conn));
}

/// Bytes that arrive while a connection sits idle and the runtime has not looked at its
/// sockets since (a busy worker's turn) must still make it unusable: tokio clears a socket's
/// readiness after a short read, so a readiness-based check said "idle and clean" and the
/// next request received the node's unsolicited bytes as its answer.
#[tokio::test(flavor = "current_thread")]
async fn bytes_that_arrived_during_the_turn_are_seen_before_reuse() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let node = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().expect("accept");
        let mut head = [0u8; 1024];
        let _ = s.read(&mut head);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .expect("answer");
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra")
            .expect("extra");
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
    let stream = TcpStream::connect(addr).await.expect("connect");
    let headers = HeaderMap::new();
    let path = PathAndQuery::from_static("/");
    let body = Bytes::new();
    let req = Outgoing {
        method: &Method::GET,
        path: &path,
        headers: &headers,
        host: None,
        body: &body,
    };
    let resp = Connection::new(stream, HeadLimits::default())
        .exchange(req, keep, addr)
        .await
        .expect("answer");
    let collected = resp.into_body().collect().await.expect("body");
    assert_eq!(&collected.to_bytes()[..], b"ok");
    // The worker stays busy (the runtime cannot poll its sockets) while the extra arrives.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut conn = KEPT
        .with_borrow_mut(|k| k.take())
        .expect("the connection was released");
    assert!(
        conn.is_stale(),
        "a connection with unread bytes must not be reused"
    );
    drop(conn);
    node.join().expect("node");
}
