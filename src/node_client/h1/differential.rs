//! The lean client against hyper's `client::conn::http1` on one corpus of node responses, each
//! split into two writes at every byte boundary: the lean client must give the same status,
//! body and trailers as hyper, or refuse (a 502) where hyper is lenient; on a valid response it
//! must never refuse.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a client made of a response: status, body and trailer fields, or that it refused it.
type Outcome = Result<(u16, Bytes, Vec<(String, String)>), String>;

/// What the lean client must make of a response.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Valid: the same outcome as hyper, which must accept it too.
    Same,
    /// Invalid framing: refused.
    Refused,
    /// Either refused, or the same outcome as hyper.
    SameOrRefused,
}

const CORPUS: &[(&str, Expect, &[u8])] = &[
    ("content-length", Expect::Same, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
    ("empty length", Expect::Same, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    ("equal lengths", Expect::SameOrRefused, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok"),
    ("chunked, extensions, trailers", Expect::Same, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1 ;c\r\n!\r\n0\r\nx-t: 1\r\ngrpc-status: 0\r\n\r\n"),
    ("Chunked in capitals", Expect::Same, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n"),
    ("until close", Expect::Same, b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
    ("http/1.0 length", Expect::Same, b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ("1xx first", Expect::Same, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"),
    ("204", Expect::Same, b"HTTP/1.1 204 No Content\r\n\r\n"),
    ("304 with a length", Expect::Same, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
    ("bare LF", Expect::SameOrRefused, b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok"),
    ("obs-fold", Expect::SameOrRefused, b"HTTP/1.1 200 OK\r\nx-a: 1\r\n 2\r\ncontent-length: 2\r\n\r\nok"),
    ("length list", Expect::SameOrRefused, b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok"),
    ("space before colon", Expect::SameOrRefused, b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok"),
    ("length and chunked", Expect::Refused, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("two lengths", Expect::Refused, b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"),
    ("signed length", Expect::Refused, b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"),
    ("signed chunk size", Expect::Refused, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+2\r\nok\r\n0\r\n\r\n"),
    ("chunk size overflow", Expect::Refused, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n0\r\n\r\n"),
    ("gzip, chunked", Expect::Refused, b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    ("http/1.0 chunked", Expect::Refused, b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    ("chunk without CRLF", Expect::Refused, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX0\r\n\r\n"),
    ("cut short", Expect::Refused, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"),
    ("not http", Expect::Refused, b"SSH-2.0-OpenSSH\r\n\r\n"),
];

/// A node that answers each connection's request with `answer`, written in two pieces split
/// at `split`, then closes.
async fn node(answer: &'static [u8], split: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let (first, second) = answer.split_at(split.min(answer.len()));
        let _ = s.write_all(first).await;
        tokio::time::sleep(Duration::from_micros(300)).await;
        let _ = s.write_all(second).await;
        let _ = s.shutdown().await;
        // Wait for the client to finish before the socket goes.
        let _ = s.read(&mut byte).await;
    });
    addr
}

fn trailers(t: Option<&HeaderMap>) -> Vec<(String, String)> {
    let mut v: Vec<_> = t
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn lean(addr: SocketAddr, method: &Method) -> Outcome {
    let (head, body, found) = super::tests::get(addr, method.clone())
        .await
        .map_err(|e| e.to_string())?;
    Ok((head.status().as_u16(), body, trailers(found.as_ref())))
}

async fn hyper(addr: SocketAddr, method: &Method) -> Outcome {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "node")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let t = trailers(collected.trailers());
    Ok((status, collected.to_bytes(), t))
}

async fn both(answer: &'static [u8], split: usize, method: &Method) -> (Outcome, Outcome) {
    let within = Duration::from_secs(5);
    let ours = tokio::time::timeout(within, lean(node(answer, split).await, method))
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    let theirs = tokio::time::timeout(within, hyper(node(answer, split).await, method))
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
    (ours, theirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_client_agrees_with_hyper_or_is_stricter_at_every_split() {
    let mut failures = Vec::new();
    for &(name, expect, answer) in CORPUS {
        for split in 1..=answer.len() {
            let (ours, theirs) = both(answer, split, &Method::GET).await;
            let fine = match expect {
                Expect::Same => theirs.is_ok() && ours == theirs,
                Expect::Refused => ours.is_err(),
                Expect::SameOrRefused => ours.is_err() || ours == theirs,
            };
            if !fine {
                failures.push(format!(
                    "{name} split at {split}: lean {ours:?}, hyper {theirs:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answer_has_no_body_in_either_client() {
    let answer: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
    for split in 1..=answer.len() {
        let (ours, theirs) = both(answer, split, &Method::HEAD).await;
        assert!(theirs.is_ok(), "{theirs:?}");
        assert_eq!(ours, theirs, "split at {split}");
    }
}
