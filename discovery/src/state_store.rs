//! Persistence of last-known-good node sets, so that a restart during a registry outage causes
//! no outage.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Endpoint, EndpointMeta, NodeSet, SharedMeta};

/// Why a stored set could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused a read or write.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists but is not a state file Outrigger wrote.
    #[error("{path}: corrupt state file: {detail}")]
    Corrupt {
        /// The file involved.
        path: PathBuf,
        /// What did not parse.
        detail: String,
    },
    /// The service name cannot be used as a file name.
    #[error("service name {0:?} cannot name a state file")]
    BadName(String),
}

/// A directory holding one JSON file per service with its last-known-good set.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct StoredSet {
    service: String,
    saved_at_unix: u64,
    changed_at_unix: u64,
    endpoints: Vec<StoredEndpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<PinRecord>,
}

/// Why a stored set is pinned: an operator's pin, kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The history version pinned to.
    pub version: u64,
    /// When it was pinned (seconds since the Unix epoch).
    pub pinned_at_unix: u64,
    /// Who pinned it (the admin peer's address).
    pub by: String,
    /// The history version pinned to (`None`: the set in use then).
    #[serde(default)]
    pub pinned_to: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct StoredEndpoint {
    address: SocketAddr,
    weight: f64,
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    secure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sources: Vec<String>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Creates `dir` and its parents if missing, the last with mode 0700.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Saves one service's node sets one at a time, on a blocking thread, newest last.
///
/// Each applied update asks for a save; saves that start together could interleave, and the
/// older set could land last, which is exactly what a restart during an outage would load.
/// Here a save asked for while one runs replaces any set still waiting, and the running writer
/// takes it next: at most one writer per service, and the file ends as the newest set.
#[derive(Debug, Clone)]
pub struct LatestWriter {
    store: StateStore,
    service: Arc<str>,
    slot: Arc<std::sync::Mutex<Slot>>,
}

#[derive(Debug, Default)]
struct Slot {
    next: Option<NodeSet>,
    writing: bool,
}

impl LatestWriter {
    /// A writer of `service`'s sets into `store`.
    pub fn new(store: StateStore, service: Arc<str>) -> Self {
        LatestWriter {
            store,
            service,
            slot: Arc::default(),
        }
    }

    /// Saves `set` after any save already running; a set still waiting is replaced. Failures
    /// are logged (the next save writes the file again). Must be called on a tokio runtime.
    pub fn submit(&self, set: NodeSet) {
        {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.next = Some(set);
            if slot.writing {
                return;
            }
            slot.writing = true;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.drain());
    }

    /// Saves waiting sets until none is left.
    fn drain(&self) {
        loop {
            let set = {
                let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
                match slot.next.take() {
                    Some(set) => set,
                    None => {
                        slot.writing = false;
                        return;
                    }
                }
            };
            if let Err(e) = self.store.save(&self.service, &set) {
                tracing::warn!(service = %self.service, error = %e, "could not persist node set");
            }
        }
    }

    /// Waits until no save is running or waiting (for tests: the publisher does not wait for
    /// saves at shutdown, as it did not before).
    pub async fn idle(&self) {
        loop {
            if !self.slot.lock().unwrap_or_else(|e| e.into_inner()).writing {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl StateStore {
    /// A store in `dir`; the directory is created on the first save.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    /// The directory in use.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, service: &str) -> Result<PathBuf, StoreError> {
        let ok = !service.is_empty()
            && !service.starts_with('.')
            && service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return Err(StoreError::BadName(service.to_string()));
        }
        Ok(self.dir.join(format!("{service}.json")))
    }

    /// Writes `set` atomically: a temp file, fsync, rename, so a crash leaves the old or the
    /// new file and never half of one.
    pub fn save(&self, service: &str, set: &NodeSet) -> Result<(), StoreError> {
        self.save_pinned(service, set, None)
    }

    /// The store of pinned sets, `pins/` in this directory: a pin is kept apart from the
    /// last-known-good set, and has no maximum age.
    pub fn pins(&self) -> StateStore {
        StateStore::new(self.dir.join("pins"))
    }

    /// Removes the stored set of `service`, if any.
    ///
    /// Errors: [`StoreError`] when the file exists and cannot be removed.
    pub fn remove(&self, service: &str) -> Result<(), StoreError> {
        let path = self.path(service)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Loads a pinned set of `service` (see [`StateStore::pins`]), whatever its age.
    ///
    /// Errors: [`StoreError`] when a file exists but cannot be trusted.
    pub fn load_pin(&self, service: &str) -> Result<Option<(NodeSet, PinRecord)>, StoreError> {
        let Some((set, pin)) = self.load_stored(service, None)? else {
            return Ok(None);
        };
        Ok(pin.map(|p| (set, p)))
    }

    /// [`StateStore::save`], with the pin it records.
    ///
    /// Errors: [`StoreError`] naming the file that could not be written.
    pub fn save_pinned(
        &self,
        service: &str,
        set: &NodeSet,
        pin: Option<PinRecord>,
    ) -> Result<(), StoreError> {
        let path = self.path(service)?;
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        create_private_dir(&self.dir).map_err(io)?;
        let stored = StoredSet {
            service: service.to_string(),
            saved_at_unix: unix(SystemTime::now()),
            changed_at_unix: unix(set.changed_at()),
            endpoints: set
                .endpoints()
                .iter()
                .map(|e| StoredEndpoint {
                    address: e.addr,
                    weight: e.weight,
                    priority: e.priority,
                    zone: e.meta.zone.clone(),
                    tags: e.meta.tags.clone(),
                    metadata: e.meta.metadata.clone(),
                    secure: e.meta.secure,
                    host_name: e.meta.host_name.clone(),
                    sources: e.meta.sources.clone(),
                })
                .collect(),
            pin,
        };
        let body = serde_json::to_vec_pretty(&stored).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        // A temp file of a random name, created exclusively with mode 0600 (node metadata can
        // carry credentials, and a predictable name could be a planted symlink), then renamed
        // over the old file.
        let mut file = tempfile::Builder::new()
            .prefix(&format!(".{service}.json."))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io)?;
        file.write_all(&body).map_err(io)?;
        file.as_file().sync_all().map_err(io)?;
        file.persist(&path).map_err(|e| io(e.error))?;
        // The rename is durable only once the directory entry is; a failure here loses nothing
        // that the next save would not write again, so it is not an error.
        if let Ok(dir) = fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Loads the stored set of `service` if one exists and is younger than `max_age`.
    ///
    /// `Ok(None)` means there is nothing usable (no file, or too old); errors mean a file exists
    /// but cannot be trusted, which callers report and otherwise ignore.
    pub fn load(&self, service: &str, max_age: Duration) -> Result<Option<NodeSet>, StoreError> {
        Ok(self
            .load_stored(service, Some(max_age))?
            .map(|(set, _)| set))
    }

    fn load_stored(
        &self,
        service: &str,
        max_age: Option<Duration>,
    ) -> Result<Option<(NodeSet, Option<PinRecord>)>, StoreError> {
        let path = self.path(service)?;
        let body = match fs::read(&path) {
            Ok(body) => body,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let stored: StoredSet = serde_json::from_slice(&body).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if stored.service != service {
            return Err(StoreError::Corrupt {
                path,
                detail: format!("holds service {:?}", stored.service),
            });
        }
        let saved_at = UNIX_EPOCH + Duration::from_secs(stored.saved_at_unix);
        let age = SystemTime::now()
            .duration_since(saved_at)
            .unwrap_or_default();
        if max_age.is_some_and(|max| age > max) {
            return Ok(None);
        }
        // Equal labels share one copy, as in a set built from the registry.
        let mut shared = SharedMeta::new();
        let endpoints = stored
            .endpoints
            .into_iter()
            .filter(|e| e.weight.is_finite() && e.weight >= 0.0 && e.address.port() != 0)
            .map(|e| Endpoint {
                addr: e.address,
                weight: e.weight,
                priority: e.priority,
                meta: shared.share(Arc::new(EndpointMeta {
                    zone: e.zone,
                    tags: e.tags,
                    metadata: e.metadata,
                    secure: e.secure,
                    host_name: e.host_name,
                    sources: e.sources,
                })),
            })
            .collect();
        let set = NodeSet::restored(
            endpoints,
            UNIX_EPOCH + Duration::from_secs(stored.changed_at_unix),
        );
        Ok(Some((set, stored.pin)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_kept_apart_and_without_an_age_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"));
        let set = NodeSet::new(vec![Endpoint::new("127.0.0.1:8081".parse().unwrap())]);
        let pin = PinRecord {
            version: 7,
            pinned_at_unix: 1,
            by: "127.0.0.1:5000".into(),
            pinned_to: Some(3),
        };
        store
            .pins()
            .save_pinned("orders", &set, Some(pin.clone()))
            .unwrap();
        assert!(store
            .load("orders", Duration::from_secs(60))
            .unwrap()
            .is_none());
        let (back, got) = store.pins().load_pin("orders").unwrap().expect("pinned");
        assert_eq!((back.len(), got), (1, pin));
        store.pins().remove("orders").unwrap();
        assert!(store.pins().load_pin("orders").unwrap().is_none());
        store.pins().remove("orders").unwrap();
    }

    #[test]
    fn round_trips_and_rejects_corruption_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"));
        let mut e = Endpoint::new("127.0.0.1:8081".parse().unwrap());
        e.weight = 3.0;
        let set = NodeSet::new(vec![e, Endpoint::new("[::1]:8082".parse().unwrap())]);
        store.save("orders", &set).unwrap();
        let back = store
            .load("orders", Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert!(back.same_nodes(&set));
        assert!(store
            .load("users", Duration::from_secs(60))
            .unwrap()
            .is_none());

        fs::write(dir.path().join("state/orders.json"), b"{not json").unwrap();
        let err = store.load("orders", Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("corrupt state file"), "{err}");

        store.save("orders", &set).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(store
            .load("orders", Duration::from_secs(0))
            .unwrap()
            .is_none());
        assert!(matches!(
            store.save("../x", &set),
            Err(StoreError::BadName(_))
        ));
    }

    fn set_of(port: u16) -> NodeSet {
        NodeSet::new(vec![Endpoint::new(SocketAddr::from((
            [127, 0, 0, 1],
            port,
        )))])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rapid_saves_leave_the_newest_set_in_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"));
        let writer = LatestWriter::new(store.clone(), "orders".into());
        for port in 1..=100 {
            writer.submit(set_of(port));
        }
        writer.idle().await;
        let back = store
            .load("orders", Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert!(back.same_nodes(&set_of(100)), "{:?}", back.endpoints());
        let mode = fs::metadata(dir.path().join("state/orders.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let left: Vec<_> = fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("orders.json")]);
    }

    #[test]
    fn a_planted_symlink_at_the_old_temp_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        let target = dir.path().join("victim");
        fs::write(&target, b"untouched").unwrap();
        std::os::unix::fs::symlink(&target, state.join(".orders.json.tmp")).unwrap();
        StateStore::new(&state).save("orders", &set_of(1)).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"untouched");
    }
}
