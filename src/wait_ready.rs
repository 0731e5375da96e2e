//! `outrigger wait-ready`: waits for the local sidecar's `/ready`, so an app's entrypoint or a
//! postStart hook can start the app only once its outbound routes are set (linkerd-await's
//! job).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How often `/ready` is asked.
const EVERY: Duration = Duration::from_millis(100);
/// How long one ask may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the command: `admin_listen` is OUTRIGGER_ADMIN_LISTEN, `timeout` the `--timeout`
/// value. Exit status 0 when ready, 1 at the timeout (the last answer or error printed), 2
/// on a bad argument.
pub fn main(admin_listen: &str, timeout: &str) -> ExitCode {
    let Some(timeout) = humantime::parse_duration(timeout.trim())
        .ok()
        .filter(|t| !t.is_zero())
    else {
        eprintln!(
            "outrigger wait-ready: --timeout={timeout:?}: a duration greater than zero, such as 30s or 2m, expected"
        );
        return ExitCode::from(2);
    };
    let Ok(addr) = admin_listen.trim().parse::<SocketAddr>() else {
        eprintln!(
            "outrigger wait-ready: OUTRIGGER_ADMIN_LISTEN={admin_listen:?}: an ip:port expected"
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outrigger wait-ready: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(wait(reachable(addr), timeout)) {
        Ok(waited) => {
            eprintln!("outrigger wait-ready: ready after {waited:?}");
            ExitCode::SUCCESS
        }
        Err(last) => {
            eprintln!("outrigger wait-ready: not ready after {timeout:?}: {last}");
            ExitCode::from(1)
        }
    }
}

/// The address to ask: a wildcard listen address is asked on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Asks `/ready` at `addr` until it answers 200 (`Ok` with the time waited) or `timeout`
/// passes (`Err` with the last answer or error).
async fn wait(addr: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let last = match tokio::time::timeout(ASK_TIMEOUT, ask(addr)).await {
            Ok(Ok((200, _))) => return Ok(started.elapsed()),
            Ok(Ok((status, body))) => format!("{status} {}", body.trim()),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer from {addr} within {ASK_TIMEOUT:?}"),
        };
        if started.elapsed() + EVERY > timeout {
            return Err(last);
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// One `GET /ready`: the status and body.
async fn ask(addr: SocketAddr) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr} (OUTRIGGER_ADMIN_LISTEN): {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("/ready")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok((status, body))
}
