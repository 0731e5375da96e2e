//! Runs the real `outrigger` binary with an environment and watches it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::client;
use crate::free_port;

/// The binary under test: `built` (a test's `CARGO_BIN_EXE_outrigger`), or the one
/// `OUTRIGGER_TEST_BIN` names, to show that a test fails against a build from before its fix.
pub fn binary_under_test(built: &'static str) -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("OUTRIGGER_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(built))
    })
}

/// A running `outrigger` process; killed when dropped.
pub struct Outrigger {
    child: Child,
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    log: PathBuf,
    _logdir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A directory removed when dropped, for the process's log.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Outrigger {
    /// [`Outrigger::start`] routing the service `orders` to `node` alone (a static list), one
    /// worker, with `extra` settings.
    pub async fn start_orders(
        binary: &Path,
        node: SocketAddr,
        extra: &[(&str, &str)],
    ) -> Outrigger {
        let mut env = vec![
            ("OUTRIGGER_UPSTREAMS", "orders".to_string()),
            ("OUTRIGGER_DISCOVERY", format!("static:orders={node}")),
            ("OUTRIGGER_WORKER_THREADS", "1".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        Outrigger::start(binary, &env).await
    }

    /// Starts `binary` with `env` (plus fresh OUTRIGGER_LISTEN / OUTRIGGER_ADMIN_LISTEN unless
    /// given) and waits until its admin API answers `/live`.
    ///
    /// Ports picked here were free a moment before the process binds them; when another test
    /// takes one in between, the process exits with "Address already in use" and is started
    /// again on new ports, so the race costs a retry instead of a failed test.
    pub async fn start(binary: &Path, env: &[(&str, String)]) -> Outrigger {
        let given = |key: &str| {
            env.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.parse().unwrap())
        };
        for _ in 0..5 {
            let proxy: SocketAddr = given("OUTRIGGER_LISTEN")
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
            let admin: SocketAddr = given("OUTRIGGER_ADMIN_LISTEN")
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
            let mut me = Self::spawn(binary, env, proxy, admin);
            match me.live(Duration::from_secs(20)).await {
                Ok(()) => return me,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("outrigger did not start:\n{log}"),
            }
        }
        panic!("outrigger could not bind free ports in five tries");
    }

    fn spawn(
        binary: &Path,
        env: &[(&str, String)],
        proxy: SocketAddr,
        admin: SocketAddr,
    ) -> Outrigger {
        let dir = std::env::temp_dir().join(format!(
            "outrigger-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("stderr.log");
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("OUTRIGGER_LISTEN", proxy.to_string())
            .env("OUTRIGGER_ADMIN_LISTEN", admin.to_string())
            .env("OUTRIGGER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Our own choice of ports wins over any in `env` only when `env` had none.
        cmd.env("OUTRIGGER_LISTEN", proxy.to_string())
            .env("OUTRIGGER_ADMIN_LISTEN", admin.to_string());
        let child = cmd.spawn().expect("start outrigger");
        Outrigger {
            child,
            proxy,
            admin,
            log,
            _logdir: tempfile_dir::Dir(dir),
        }
    }

    /// Waits for `/live`; the log if the process exits or the time runs out first.
    async fn live(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited early ({status}):\n{}", self.log()));
            }
            if let Ok(r) = client::get_admin(self.admin, "/live").await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("/live not 200 within {within:?}:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `path` on the admin API answers 200; panics with the log if it never does.
    pub async fn wait_for(&mut self, path: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("outrigger exited early ({status}):\n{}", self.log());
            }
            if let Ok(r) = client::get_admin(self.admin, path).await {
                if r.status == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "outrigger {path} not 200 within {within:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The process id, to read its threads from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/upstreams` as JSON.
    pub async fn upstreams(&self) -> serde_json::Value {
        let r = client::get_admin(self.admin, "/upstreams")
            .await
            .expect("admin answers");
        serde_json::from_str(&r.body).expect("upstreams is JSON")
    }

    /// One service's part of `/upstreams` (`Null` for a service it does not list).
    pub async fn service(&self, name: &str) -> serde_json::Value {
        self.upstreams().await["services"][name].clone()
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        client::get_admin(self.admin, "/metrics")
            .await
            .expect("admin answers")
            .body
    }

    /// Sends `n` requests for `service`, one after another; every one must answer 200.
    /// Returns how many each upstream (by its body) served.
    pub async fn served(
        &self,
        service: &str,
        n: usize,
    ) -> std::collections::HashMap<String, usize> {
        let mut seen = std::collections::HashMap::new();
        for _ in 0..n {
            let r = client::get(self.proxy, service, "/")
                .await
                .expect("proxy answers");
            assert_eq!(r.status, 200, "{r:?}\n{}", self.log());
            *seen.entry(r.body).or_default() += 1;
        }
        seen
    }

    /// Kills the process at once (SIGKILL), as `kill -9` or an OOM kill does.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit, up to `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Outrigger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `binary` with `env` to completion (for configuration errors), returning its exit
/// status and stderr.
pub fn run_to_exit(binary: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let out = Command::new(binary)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run outrigger");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
