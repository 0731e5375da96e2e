//! Telling HTTP/1.1 from HTTP/2 prior knowledge by a connection's first bytes.

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The 24 bytes every HTTP/2 prior-knowledge connection starts with (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Which protocol `stream` speaks, by whether it starts with the HTTP/2 preface.
///
/// The usual case costs one `peek`, which leaves the bytes for hyper. A preface that arrives
/// in pieces is read instead, into `prefix`, which the caller must hand to hyper before the
/// rest of the stream (`BatchedStream::with_prefix`), so that the end of the stream and
/// `deadline` are seen: peeking again would return the same bytes at once, and a peer that sent
/// `P` and closed was peeked at every millisecond for ever. `None` when the peer closed, failed
/// or reached `deadline` before its protocol was known.
pub(crate) async fn sniff(
    stream: &TcpStream,
    prefix: &mut Vec<u8>,
    deadline: Instant,
) -> Option<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
        .await
        .ok()?
        .ok()?;
    if n == 0 {
        return None;
    }
    if let Some(protocol) = judge(&buf[..n]) {
        return Some(protocol);
    }
    let read = async {
        loop {
            stream.readable().await.ok()?;
            match stream.try_read(&mut buf[prefix.len()..]) {
                Ok(0) => return None,
                Ok(k) => {
                    let start = prefix.len();
                    prefix.extend_from_slice(&buf[start..start + k]);
                    if let Some(protocol) = judge(prefix) {
                        return Some(protocol);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout_at(deadline, read).await.ok()?
}

/// The protocol that `start`, a connection's first bytes, names; `None` while they are empty
/// or a proper prefix of the HTTP/2 preface.
fn judge(start: &[u8]) -> Option<Protocol> {
    if start.is_empty() {
        None
    } else if start != &H2_PREFACE[..start.len().min(H2_PREFACE.len())] {
        Some(Protocol::Http1)
    } else if start.len() >= H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn judges_by_the_preface() {
        assert_eq!(judge(b""), None);
        assert_eq!(judge(b"P"), None);
        assert_eq!(judge(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(judge(b"POST / HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(judge(b"GET"), Some(Protocol::Http1));
        assert_eq!(judge(H2_PREFACE), Some(Protocol::Http2));
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn a_preface_prefix_then_close_ends_the_sniff_at_once() {
        let (mut client, server) = pair().await;
        client.write_all(b"P").await.expect("write");
        drop(client);
        let mut prefix = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let started = std::time::Instant::now();
        assert_eq!(sniff(&server, &mut prefix, deadline).await, None);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_preface_prefix_held_open_ends_at_the_deadline() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI").await.expect("write");
        let mut prefix = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(200);
        assert_eq!(sniff(&server, &mut prefix, deadline).await, None);
        drop(client);
    }

    #[tokio::test]
    async fn a_preface_in_pieces_is_read_and_kept_for_hyper() {
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..3]).await.expect("write");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&H2_PREFACE[3..]).await.expect("write");
            client
        });
        let mut prefix = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            sniff(&server, &mut prefix, deadline).await,
            Some(Protocol::Http2)
        );
        assert_eq!(prefix, H2_PREFACE);
        drop(writer.await);
    }

    #[tokio::test]
    async fn a_request_in_pieces_that_only_looks_like_a_preface_is_http1() {
        let (mut client, server) = pair().await;
        client.write_all(b"P").await.expect("write");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client
                .write_all(b"OST / HTTP/1.1\r\n")
                .await
                .expect("write");
            client
        });
        let mut prefix = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            sniff(&server, &mut prefix, deadline).await,
            Some(Protocol::Http1)
        );
        assert!(prefix.starts_with(b"PO"));
        drop(writer.await);
    }
}
