//! Raw-socket peers for tests of framing and connection handling: a node whose answers are
//! exact bytes (including ones no well-behaved server sends), and an app that writes exact
//! bytes and reads whatever comes back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a [`RawNode`] does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Writes these bytes and waits for the next request on the connection.
    Reply(Vec<u8>),
    /// Writes the first bytes, waits, then writes the second (an answer nobody asked for).
    ReplyThen(Vec<u8>, Duration, Vec<u8>),
    /// Writes these bytes and closes the connection.
    ReplyClose(Vec<u8>),
    /// Writes these bytes and then neither writes nor closes, for a minute.
    Stall(Vec<u8>),
    /// Closes the connection without answering.
    Close,
}

/// One request as the node read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request head, request line and header fields, as text.
    pub head: String,
    /// The connection's number (0 for the first accepted).
    pub connection: usize,
    /// The body, as sent with `content-length` or decoded from chunks.
    pub body: Vec<u8>,
}

type Answer = dyn Fn(&str, usize) -> Action + Send + Sync;

/// A node on loopback that reads request heads (and `content-length` or chunked bodies) and
/// answers each
/// with the [`Action`] its function picks from the head and the request's number.
pub struct RawNode {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RawNode {
    /// Starts a node answering with `answer(head, n)` for the n-th request (from 0).
    pub async fn start(answer: impl Fn(&str, usize) -> Action + Send + Sync + 'static) -> RawNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let record = seen.clone();
        tokio::spawn(async move {
            let mut connection = 0;
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, connection, answer.clone(), record.clone()));
                connection += 1;
            }
        });
        RawNode { addr, seen }
    }

    /// The requests read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    connection: usize,
    answer: Arc<Answer>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let header = |wanted: &str| {
            head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case(wanted)
                    .then(|| value.trim().to_ascii_lowercase())
            })
        };
        let body = if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            let Some(body) = read_chunked(&mut stream, &mut buf).await else {
                return;
            };
            body
        } else {
            let length = header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if !fill(&mut stream, &mut buf, length).await {
                return;
            }
            buf.drain(..length).collect()
        };
        let n = {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.push(Seen {
                head: head.clone(),
                connection,
                body,
            });
            seen.len() - 1
        };
        match answer(&head, n) {
            Action::Reply(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Action::ReplyThen(first, gap, second) => {
                if stream.write_all(&first).await.is_err() {
                    return;
                }
                tokio::time::sleep(gap).await;
                if stream.write_all(&second).await.is_err() {
                    return;
                }
            }
            Action::ReplyClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Action::Stall(bytes) => {
                let _ = stream.write_all(&bytes).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            Action::Close => return,
        }
    }
}

/// Reads until `buf` holds at least `n` bytes; false at the end of the stream.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    while buf.len() < n {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
        }
    }
    true
}

/// Reads and decodes a chunked body (trailers skipped) from `buf` and the stream.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Some(body);
        }
        if !fill(stream, buf, size + 2).await {
            return None;
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// Takes one CRLF-ended line from `buf`, reading more as needed; `None` at the end.
async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            return Some(line);
        }
        if !fill(stream, buf, buf.len() + 1).await {
            return None;
        }
    }
}

/// Reads until `buf` holds a whole head; the index of its `\r\n\r\n`, or `None` at the end.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `request` to `to` as an app would, then reads until the peer closes or `wait`
/// passes, and returns what came back.
pub async fn exchange(to: SocketAddr, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(to).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_for(&mut stream, wait).await
}

/// Reads from `stream` until it closes or `wait` passes.
pub async fn read_for(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out
}

/// Whether the peer of `stream` closed it within `wait` (a read returned end of stream or an
/// error), reading and discarding anything it sent first.
pub async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A response with `content-length` and `body`, kept alive.
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
