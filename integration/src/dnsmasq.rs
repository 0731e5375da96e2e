//! Runs the real dnsmasq (Debian's `dnsmasq-base`) on a loopback port with a hosts file and SRV
//! records the test controls. Host changes are applied with SIGHUP, as operators do; SRV
//! records live in its configuration, which dnsmasq reads only at start, so changing them
//! restarts it on the same port.
//!
//! Names under `.fail` are forwarded to an upstream that answers every query with SERVFAIL,
//! as a broken or unreachable recursive server does: a `.fail` name in the hosts file gets its
//! A (or AAAA) record from dnsmasq and SERVFAIL for the record type the file does not give it;
//! one not in the file gets SERVFAIL for every type.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::free_port;

/// One SRV record: name, target, port, priority, weight.
pub type Srv<'a> = (&'a str, &'a str, u16, u16, u16);

/// A running dnsmasq; killed when dropped.
pub struct Dnsmasq {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
    /// The SERVFAIL upstream for `.fail` names.
    failing: SocketAddr,
    stop_failing: Arc<AtomicBool>,
}

/// Answers every DNS query on a loopback UDP port with SERVFAIL until `stop`.
fn servfail_upstream(stop: Arc<AtomicBool>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if n < 12 {
                continue;
            }
            // The query back, marked as a response (QR) with RCODE 2 (SERVFAIL).
            buf[2] |= 0x80;
            buf[3] = (buf[3] & 0xf0) | 2;
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("dnsmasq is not installed: integration/run-tests.sh installs it (apt dnsmasq-base)");
}

impl Dnsmasq {
    /// Starts dnsmasq answering for `*.test` from `hosts` (hosts-file lines) and `srv`, with a
    /// TTL of 1 s on every local answer. Unknown `.test` names get NXDOMAIN.
    pub fn start(hosts: &str, srv: &[Srv<'_>]) -> Dnsmasq {
        let dir = std::env::temp_dir().join(format!(
            "outrigger-dnsmasq-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let stop_failing = Arc::new(AtomicBool::new(false));
        let mut me = Dnsmasq {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir,
            child: None,
            failing: servfail_upstream(stop_failing.clone()),
            stop_failing,
        };
        std::fs::write(me.dir.join("hosts"), hosts).unwrap();
        me.write_srv(srv);
        // A port free a moment ago may be taken by another test before dnsmasq binds it:
        // then it exits at once, and a new port is tried.
        for _ in 0..5 {
            match me.try_spawn() {
                Ok(()) => return me,
                Err(log) if log.contains("in use") => {
                    me.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
                }
                Err(log) => panic!("dnsmasq did not start: {log}"),
            }
        }
        panic!("dnsmasq could not bind a free port in five tries");
    }

    fn write_srv(&self, srv: &[Srv<'_>]) {
        let mut conf = format!(
            "server=/fail/{}#{}\n",
            self.failing.ip(),
            self.failing.port()
        );
        conf.extend(srv.iter().map(|(name, target, port, prio, weight)| {
            format!("srv-host={name},{target},{port},{prio},{weight}\n")
        }));
        std::fs::write(self.dir.join("conf"), conf).unwrap();
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("dnsmasq did not start: {log}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let child = Command::new(binary())
            .args([
                "--keep-in-foreground",
                "--user=root",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local-ttl=1",
                "--local=/test/",
                "--pid-file=",
                "--log-facility=-",
            ])
            .arg(format!("--port={}", self.addr.port()))
            .arg(format!("--addn-hosts={}", self.dir.join("hosts").display()))
            .arg(format!("--conf-file={}", self.dir.join("conf").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap())
            .spawn()
            .expect("start dnsmasq");
        self.child = Some(child);
        self.wait_answering()
    }

    fn wait_answering(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        // A minimal query for "probe.test" A; any answer means dnsmasq is serving.
        let query: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x04test\x00\x00\x01\x00\x01";
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("exited ({status}): {}", self.log()));
            }
            let _ = socket.send_to(query, self.addr);
            let mut buf = [0u8; 512];
            if socket.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("never answered: {}", self.log()));
            }
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Replaces the hosts file and makes dnsmasq re-read it (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        let tmp = self.dir.join("hosts.tmp");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::rename(&tmp, self.dir.join("hosts")).unwrap();
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-HUP", &child.id().to_string()])
                .status();
        }
    }

    /// Replaces the SRV records; dnsmasq restarts on the same port to read them.
    pub fn set_srv(&mut self, srv: &[Srv<'_>]) {
        self.write_srv(srv);
        self.stop();
        self.spawn();
    }

    /// Stops dnsmasq: queries go unanswered.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the current files.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        self.stop_failing.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
