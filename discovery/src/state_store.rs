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
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
        let path = self.path(service)?;
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(io)?;
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
                })
                .collect(),
        };
        let body = serde_json::to_vec_pretty(&stored).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let tmp = self.dir.join(format!(".{service}.json.tmp"));
        let mut file = fs::File::create(&tmp).map_err(io)?;
        file.write_all(&body).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
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
        if age > max_age {
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
                })),
            })
            .collect();
        Ok(Some(NodeSet::restored(
            endpoints,
            UNIX_EPOCH + Duration::from_secs(stored.changed_at_unix),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
