//! Runs the real r-nacos server (`cargo install rnacos --locked`) on free loopback ports with
//! its own data directory, and drives it through the Nacos open API as users do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use crate::{client, free_port};

/// A running r-nacos; killed when dropped.
pub struct RNacos {
    /// The HTTP (open API) address.
    pub http: SocketAddr,
    /// The gRPC port (Nacos 2.x clients, push).
    pub grpc: u16,
    console: u16,
    dir: PathBuf,
    child: Option<Child>,
    auth: Option<(String, String)>,
}

fn binary() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let candidates = [
        home.join("bin/rnacos"),
        PathBuf::from("/usr/local/bin/rnacos"),
    ];
    for c in candidates {
        if c.exists() {
            return c;
        }
    }
    panic!("rnacos is not installed: integration/run-tests.sh installs it (cargo install rnacos --locked)");
}

impl RNacos {
    /// Starts r-nacos; with `auth`, the open API requires login as that admin user.
    pub async fn start(auth: Option<(&str, &str)>) -> RNacos {
        let dir = std::env::temp_dir().join(format!(
            "outrigger-rnacos-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut me = RNacos {
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            grpc: free_port(),
            console: free_port(),
            dir,
            child: None,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        me.spawn(true).await;
        me
    }

    /// Starts the server and waits until it is usable. r-nacos 0.8.8 has a start-up race in
    /// its raft state machine (an `unwrap` on a bean not yet injected): sometimes it then never
    /// opens its gRPC port, or its user store stops answering. Usable means the HTTP API
    /// answers, the gRPC port accepts and (with auth) login works; otherwise it is restarted on
    /// the same directory, which does not hit the race again. With `new_ports`, a retry starts
    /// afresh instead, on new ports and empty data, in case a port picked as free was taken
    /// before r-nacos bound it (possible only before anything has been told the ports, i.e. at
    /// start).
    async fn spawn(&mut self, new_ports: bool) {
        let mut failures = Vec::new();
        for _ in 0..4 {
            let usable = match self.spawn_once().await {
                Ok(()) => self.usable().await,
                Err(why) => Err(why),
            };
            match usable {
                Ok(()) => return,
                Err(why) => failures.push(why),
            }
            let _ = std::fs::rename(self.dir.join("log"), self.dir.join("log.raced"));
            self.kill();
            if new_ports {
                // A fresh start throughout: the raft state in the data directory names the
                // old gRPC address, so new ports need a new directory too.
                let _ = std::fs::remove_dir_all(self.dir.join("db"));
                let _ = std::fs::remove_dir_all(self.dir.join("data"));
                self.http = SocketAddr::from(([127, 0, 0, 1], free_port()));
                self.grpc = free_port();
                self.console = free_port();
            }
        }
        panic!(
            "rnacos never became usable ({}): {}",
            failures.join("; "),
            self.log()
        );
    }

    /// Whether the gRPC port accepts and (with auth) login works, within 10 s; if not, which
    /// of the two failed.
    async fn usable(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let grpc = tokio::net::TcpStream::connect(("127.0.0.1", self.grpc))
                .await
                .is_ok();
            let login = self.auth.is_none() || self.try_token().await.is_some();
            if grpc && login {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "gRPC port {} {}, login {}",
                    self.grpc,
                    if grpc { "accepts" } else { "closed" },
                    if login { "works" } else { "fails" }
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the process and waits until its HTTP API answers; if it exits or never answers,
    /// says so.
    async fn spawn_once(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(binary());
        cmd.current_dir(&self.dir)
            .env_clear()
            .env("RNACOS_HTTP_PORT", self.http.port().to_string())
            .env("RNACOS_GRPC_PORT", self.grpc.to_string())
            .env("RNACOS_HTTP_CONSOLE_PORT", self.console.to_string())
            .env("RNACOS_SDK_HOST", "127.0.0.1")
            .env("RNACOS_CONSOLE_HOST", "127.0.0.1")
            .env("RNACOS_RAFT_NODE_ADDR", format!("127.0.0.1:{}", self.grpc))
            .env("RNACOS_CONFIG_DB_DIR", self.dir.join("db"))
            .env("RNACOS_DATA_DIR", self.dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap());
        if let Some((user, pass)) = &self.auth {
            cmd.env("RNACOS_ENABLE_OPEN_API_AUTH", "true")
                .env("RNACOS_INIT_ADMIN_USERNAME", user)
                .env("RNACOS_INIT_ADMIN_PASSWORD", pass);
        }
        self.child = Some(cmd.spawn().expect("start rnacos"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("rnacos exited ({status}): {}", self.log()));
            }
            if let Ok(r) = client::get(
                self.http,
                "nacos",
                "/nacos/v1/ns/instance/list?serviceName=probe",
            )
            .await
            {
                if r.status.is_success() || r.status == 403 || r.status == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("HTTP port {} never answered", self.http));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    async fn token(&self) -> Option<String> {
        self.auth.as_ref()?;
        Some(self.try_token().await.expect("login to rnacos"))
    }

    async fn try_token(&self) -> Option<String> {
        let (user, pass) = self.auth.as_ref()?;
        let req = Request::post("/nacos/v1/auth/login")
            .header("host", "nacos")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "username={user}&password={pass}"
            ))))
            .unwrap();
        let r = client::send(self.http, req).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        v["accessToken"].as_str().map(str::to_string)
    }

    async fn call(&self, method: Method, query: String) {
        let query = match self.token().await {
            Some(t) => format!("{query}&accessToken={t}"),
            None => query,
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("/nacos/v1/ns/instance?{query}"))
            .header("host", "nacos")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = client::send(self.http, req).await.expect("rnacos answers");
        assert!(
            r.status.is_success(),
            "{method} {query}: {} {}",
            r.status,
            r.body
        );
    }

    /// Every instance of `service` the server has, healthy or not, as
    /// `/nacos/v1/ns/instance/list` returns them (`hosts`).
    pub async fn instances(&self, service: &str) -> Vec<serde_json::Value> {
        let mut path =
            format!("/nacos/v1/ns/instance/list?serviceName={service}&healthyOnly=false");
        if let Some(t) = self.token().await {
            path = format!("{path}&accessToken={t}");
        }
        let req = Request::get(path)
            .header("host", "nacos")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = client::send(self.http, req).await.expect("rnacos answers");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        v["hosts"].as_array().cloned().unwrap_or_default()
    }

    /// Registers a persistent instance of `service` at `addr` with `weight`.
    pub async fn register(&self, service: &str, addr: SocketAddr, weight: f64) {
        self.call(
            Method::POST,
            format!("serviceName={service}&ip={}&port={}&weight={weight}&ephemeral=false&enabled=true&healthy=true", addr.ip(), addr.port()),
        )
        .await;
    }

    /// Removes an instance.
    pub async fn deregister(&self, service: &str, addr: SocketAddr) {
        self.call(
            Method::DELETE,
            format!(
                "serviceName={service}&ip={}&port={}&ephemeral=false",
                addr.ip(),
                addr.port()
            ),
        )
        .await;
    }

    /// Enables or disables an instance (disabled instances take no traffic).
    pub async fn set_enabled(&self, service: &str, addr: SocketAddr, weight: f64, enabled: bool) {
        self.call(
            Method::PUT,
            format!("serviceName={service}&ip={}&port={}&weight={weight}&ephemeral=false&enabled={enabled}", addr.ip(), addr.port()),
        )
        .await;
    }

    /// Kills the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn(false).await;
    }
}

impl Drop for RNacos {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
