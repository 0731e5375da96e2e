//! Property tests of the lean client's number parsers and chunked decoder, on stable Rust
//! (proptest), with a bounded number of cases so that they run inside the test command.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::body::parse_chunk_size;
use super::head::parse_length;
use super::{Connection, Outgoing};

/// The RFC's grammar, written plainly: `1*DIGIT` within u64.
fn reference_length(v: &[u8]) -> Option<u64> {
    let t = std::str::from_utf8(v).ok()?.trim_matches([' ', '\t']);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// `1*HEXDIG [BWS] [";" ext]`, at most 16 digits, and no control character (LF, CR, NUL, ...)
/// anywhere; the extension's bytes are not judged otherwise.
fn reference_chunk_size(line: &[u8]) -> Option<u64> {
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return None;
    }
    let size = line.split(|&b| b == b';').next()?;
    let text = std::str::from_utf8(size).ok()?;
    let digits = text.trim_end_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn content_length_is_digits_only(v in proptest::collection::vec(any::<u8>(), 0..24)) {
        prop_assert_eq!(parse_length(&v), reference_length(&v));
    }

    #[test]
    fn content_length_round_trips(n in any::<u64>(), pad in "[ \t]{0,2}") {
        let text = format!("{pad}{n}{pad}");
        prop_assert_eq!(parse_length(text.as_bytes()), Some(n));
        let signed = format!("+{n}");
        prop_assert_eq!(parse_length(signed.as_bytes()), None);
    }

    #[test]
    fn chunk_sizes_follow_the_grammar(
        line in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            "[0-9a-fA-F+\\- ]{0,18}(;[a-z=\"]{0,6})?".prop_map(String::into_bytes),
        ]
    ) {
        prop_assert_eq!(parse_chunk_size(&line), reference_chunk_size(&line));
    }

    #[test]
    fn any_head_bytes_parse_or_fail_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let _ = super::parse_head(&mut buf, &Method::GET, super::HeadLimits::default());
    }
}

/// Encodes `body` as chunks of the given sizes (cycled), with an extension now and then.
fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        let ext = if i % 3 == 1 { ";x=y" } else { "" };
        out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
    out
}

/// Sends `answer` to one lean-client request in pieces of the given sizes; returns the body.
async fn decode(answer: Vec<u8>, pieces: Vec<usize>) -> Result<(Bytes, bool), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        let mut head = [0u8; 512];
        let _ = s.read(&mut head).await;
        let mut rest = &answer[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = pieces[i % pieces.len()].clamp(1, rest.len());
            let _ = s.write_all(&rest[..n]).await;
            tokio::time::sleep(Duration::from_micros(100)).await;
            rest = &rest[n..];
            i += 1;
        }
        let _ = s.read(&mut head).await;
    });
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let headers = HeaderMap::new();
    let path = http::uri::PathAndQuery::from_static("/");
    let empty = Bytes::new();
    let req = Outgoing {
        method: &Method::GET,
        path: &path,
        headers: &headers,
        host: None,
        body: &empty,
    };
    let resp = Connection::new(stream, super::HeadLimits::default())
        .exchange(req, |_, _| {}, addr)
        .await
        .map_err(|e| e.to_string())?;
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailer = collected
        .trailers()
        .is_some_and(|t| t.get("x-trailer").is_some());
    Ok((collected.to_bytes(), trailer))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn chunked_bodies_decode_whatever_the_chunk_and_read_sizes(
        body in proptest::collection::vec(any::<u8>(), 1..3000),
        sizes in proptest::collection::vec(1usize..700, 1..5),
        pieces in proptest::collection::vec(1usize..900, 1..5),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let answer = chunked(&body, &sizes);
        let decoded = runtime.block_on(decode(answer, pieces));
        let (got, trailer) = decoded.map_err(TestCaseError::fail)?;
        prop_assert_eq!(&got[..], &body[..]);
        prop_assert!(trailer);
    }
}
