//! The file adapter: node lists in a JSON or TOML file that is re-read when it changes.
//!
//! The format (JSON shown; TOML is the same structure, chosen by a `.toml` extension):
//!
//! ```json
//! {"services": {"orders": [
//!     {"address": "127.0.0.1:8081", "weight": 3, "zone": "a", "priority": 0,
//!      "tags": ["v2"], "metadata": {"version": "2.1"}},
//!     {"address": "[::1]:8082"}
//! ]}}
//! ```
//!
//! Only `address` is required; `weight` defaults to 1. The file is polled (size, modification
//! time, inode) rather than watched with inotify, because polling also sees the atomic symlink
//! swaps that Kubernetes uses for mounted ConfigMaps and costs one `stat` per interval.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::pace::UpdateSpacing;
use crate::{Candidate, Discovery, DiscoveryError, EndpointMeta, SharedMeta, UpdateSink};

/// Files larger than this are rejected whole rather than read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A node-list file, polled for changes.
#[derive(Debug, Clone)]
pub struct FileDiscovery {
    path: PathBuf,
    poll: Duration,
    spacing: UpdateSpacing,
}

// The file is read into borrowed views of its text. Read into owned strings, each entry made
// five small allocations (address, metadata map, its keys and values) only to copy or drop
// them; borrowed, an entry makes one (its host), and equal labels are built once
// (bench/HISTORY.md, session 10: 6% fewer instructions for a 10,000-endpoint update).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody<'a> {
    #[serde(borrow)]
    services: BTreeMap<String, Vec<FileEndpoint<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint<'a> {
    #[serde(borrow)]
    address: Text<'a>,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    priority: u32,
    #[serde(default, borrow)]
    zone: Option<Text<'a>>,
    #[serde(default, borrow)]
    tags: Vec<Text<'a>>,
    #[serde(default, borrow)]
    metadata: Pairs<'a>,
}

/// A string of the file, borrowed from its text unless it has escapes.
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// A metadata value: a string, or a boolean or number written without quotes (`"secure":
/// true`, `"port": 8443`), kept as the text a registry would hold.
struct MetaValue<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MetaValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor<'a>(PhantomData<MetaValue<'a>>);
        impl<'de: 'a, 'a> Visitor<'de> for ValueVisitor<'a> {
            type Value = MetaValue<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, boolean or number")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<MetaValue<'a>, E> {
                Ok(MetaValue(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<MetaValue<'a>, E> {
                Ok(MetaValue(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<MetaValue<'a>, E> {
                Ok(MetaValue(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<MetaValue<'a>, E> {
                Ok(MetaValue(Cow::Borrowed(if v { "true" } else { "false" })))
            }
            fn visit_i64<E>(self, v: i64) -> Result<MetaValue<'a>, E> {
                Ok(MetaValue(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<MetaValue<'a>, E> {
                Ok(MetaValue(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<MetaValue<'a>, E> {
                Ok(MetaValue(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(ValueVisitor(PhantomData))
    }
}

/// A metadata object as borrowed pairs, in key order and with the last of repeated keys kept,
/// as a map would hold them: so they compare with labels already built without building a map.
#[derive(Default)]
struct Pairs<'a>(Vec<(Text<'a>, Text<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor<'a>(PhantomData<Pairs<'a>>);
        impl<'de: 'a, 'a> Visitor<'de> for PairsVisitor<'a> {
            type Value = Pairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings, booleans or numbers")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Pairs<'a>, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry::<Text<'a>, MetaValue<'a>>()? {
                    pairs.push((k, Text(v.0)));
                }
                // Latest first, then a stable sort and dedup: the last of repeated keys stays.
                pairs.reverse();
                pairs.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                pairs.dedup_by(|a, b| a.0.as_str() == b.0.as_str());
                Ok(Pairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor(PhantomData))
    }
}

impl FileEndpoint<'_> {
    /// True when `meta` holds exactly this entry's zone, tags and metadata.
    fn has_labels(&self, meta: &EndpointMeta) -> bool {
        meta.zone.as_deref() == self.zone.as_ref().map(Text::as_str)
            && meta
                .tags
                .iter()
                .map(String::as_str)
                .eq(self.tags.iter().map(Text::as_str))
            && meta
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .eq(self
                    .metadata
                    .0
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// This entry's zone, tags and metadata, built.
    fn labels(&self) -> EndpointMeta {
        let secure =
            self.metadata.0.iter().any(|(k, v)| {
                k.as_str() == "secure" && v.as_str().trim().eq_ignore_ascii_case("true")
            });
        EndpointMeta {
            secure,
            host_name: None,
            sources: Vec::new(),
            zone: self.zone.as_ref().map(|z| z.as_str().to_owned()),
            tags: self.tags.iter().map(|t| t.as_str().to_owned()).collect(),
            metadata: self
                .metadata
                .0
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
                .collect(),
        }
    }
}

fn one() -> f64 {
    1.0
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileDiscovery {
    /// A source reading `path`, checking for changes every `poll`.
    pub fn new(path: impl Into<PathBuf>, poll: Duration) -> Self {
        FileDiscovery {
            path: path.into(),
            poll,
            spacing: UpdateSpacing::default(),
        }
    }

    /// Sets how long to wait after reading the file before looking at it again, by the number
    /// of endpoints read (the file is read whole, every service at once).
    pub fn with_spacing(mut self, spacing: UpdateSpacing) -> Self {
        self.spacing = spacing;
        self
    }

    fn registry(&self) -> String {
        self.describe()
    }

    fn signature(&self) -> Result<Signature, DiscoveryError> {
        // `metadata` follows symlinks, so a swapped link target is seen as a change.
        let meta = std::fs::metadata(&self.path).map_err(|e| DiscoveryError::Transport {
            registry: self.registry(),
            detail: e.to_string(),
        })?;
        Ok(Signature {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        })
    }

    /// Reads and parses the file into each service's candidates.
    pub fn read(&self) -> Result<BTreeMap<String, Vec<Candidate>>, DiscoveryError> {
        let registry = self.registry();
        let signature = self.signature()?;
        if signature.len > MAX_FILE_BYTES {
            return Err(DiscoveryError::TooLarge {
                registry,
                limit: MAX_FILE_BYTES as usize,
            });
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| DiscoveryError::Transport {
            registry: registry.clone(),
            detail: e.to_string(),
        })?;
        let is_toml = self.path.extension().is_some_and(|e| e == "toml");
        let strict: Result<FileBody, String> = if is_toml {
            toml::from_str(&text).map_err(|e| e.to_string().trim().replace('\n', " "))
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        // Nodes with equal labels share them, built once per file read.
        let mut shared = SharedMeta::new();
        let body = match strict {
            Ok(body) => body,
            // One unreadable entry costs only itself: the file is read again entry by entry,
            // which a well-formed file never pays for.
            Err(detail) => {
                return read_entry_by_entry(&text, is_toml, &mut shared)
                    .ok_or(DiscoveryError::Parse { registry, detail })
            }
        };
        Ok(body
            .services
            .into_iter()
            .map(|(name, entries)| {
                let candidates = entries.iter().map(|e| candidate(e, &mut shared)).collect();
                (name.to_ascii_lowercase(), candidates)
            })
            .collect())
    }
}

/// The node an entry of the file names.
fn candidate(e: &FileEndpoint<'_>, shared: &mut SharedMeta) -> Candidate {
    let mut c = Candidate::from_address(e.address.as_str());
    c.weight = e.weight;
    c.priority = e.priority;
    c.meta = shared.get_or_build(|m| e.has_labels(m), || e.labels());
    c
}

/// The file read entry by entry, once the strict read failed: each entry that cannot be read
/// (a missing `address`, a `null` or a wrong type, an unknown field) becomes a dropped entry
/// naming its service, index and field, and the others route. `None` when the file's shape
/// itself is wrong (not JSON or TOML, no `services` table of lists, other top-level keys):
/// then the file is rejected whole, with the strict read's error.
fn read_entry_by_entry(
    text: &str,
    is_toml: bool,
    shared: &mut SharedMeta,
) -> Option<BTreeMap<String, Vec<Candidate>>> {
    let root: serde_json::Value = if is_toml {
        toml::from_str(text).ok()?
    } else {
        serde_json::from_str(text).ok()?
    };
    let root = root.as_object()?;
    if root.len() != 1 {
        return None;
    }
    let mut out = BTreeMap::new();
    for (name, entries) in root.get("services")?.as_object()? {
        let candidates = entries
            .as_array()?
            .iter()
            .enumerate()
            .map(|(i, entry)| match FileEndpoint::deserialize(entry) {
                Ok(e) => candidate(&e, shared),
                Err(e) => Candidate::malformed(format!("services.{name}[{i}]: {e}")),
            })
            .collect();
        out.insert(name.to_ascii_lowercase(), candidates);
    }
    Some(out)
}

impl Discovery for FileDiscovery {
    fn describe(&self) -> String {
        format!("file://{}", self.path.display())
    }

    fn run(
        self: Box<Self>,
        services: Vec<Arc<str>>,
        sink: UpdateSink,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut seen: Option<Result<Signature, String>> = None;
            loop {
                let mut wait = self.poll;
                let now = self.signature().map_err(|e| e.to_string());
                if seen.as_ref() != Some(&now) {
                    seen = Some(now);
                    let reader = self.clone();
                    let mut read = tokio::task::spawn_blocking(move || reader.read())
                        .await
                        .unwrap_or_else(|e| {
                            Err(DiscoveryError::Transport {
                                registry: self.registry(),
                                detail: e.to_string(),
                            })
                        });
                    if let Ok(all) = &read {
                        let endpoints = all.values().map(Vec::len).sum();
                        wait = wait.max(self.spacing.after(endpoints));
                    }
                    for service in &services {
                        let result = match &mut read {
                            // A routed service absent from the file has no nodes; the guard
                            // decides whether that emptiness is believable. Each service is
                            // named once, so its list is moved out rather than copied (a copy
                            // was 14% of a 10,000-endpoint update).
                            Ok(all) => Ok(all.remove(&**service).unwrap_or_default()),
                            Err(e) => Err(e.clone()),
                        };
                        if !sink.send(service, result).await {
                            return;
                        }
                    }
                }
                tokio::time::sleep(wait).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_entry_costs_only_itself_in_json_and_toml() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("nodes.json");
        std::fs::write(
            &json,
            r#"{"services": {"orders": [
                {"address": "127.0.0.1:8081"},
                {"address": null},
                {"adress": "127.0.0.1:8083"},
                {"address": "127.0.0.1:8084", "weight": "heavy"},
                {"address": "127.0.0.1:8085"}
            ]}}"#,
        )
        .unwrap();
        let read = FileDiscovery::new(&json, Duration::from_secs(1))
            .read()
            .unwrap();
        let v = crate::validate::validate(read["orders"].clone());
        let ports: Vec<u16> = v.endpoints.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [8081, 8085]);
        let named: Vec<&str> = v.dropped.iter().map(|d| d.entry.as_str()).collect();
        assert!(named[0].starts_with("services.orders[1]"), "{named:?}");
        assert!(named[1].contains("adress"), "{named:?}");
        assert!(named[2].starts_with("services.orders[3]"), "{named:?}");
        assert!(v
            .dropped
            .iter()
            .all(|d| d.reason == crate::DropReason::MalformedEntry));

        let toml = dir.path().join("nodes.toml");
        std::fs::write(
            &toml,
            "[[services.orders]]\naddress = \"127.0.0.1:8081\"\n[[services.orders]]\naddress = 8082\n",
        )
        .unwrap();
        let read = FileDiscovery::new(&toml, Duration::from_secs(1))
            .read()
            .unwrap();
        let v = crate::validate::validate(read["orders"].clone());
        assert_eq!(v.endpoints.len(), 1);
        assert_eq!(v.dropped.len(), 1);

        // A file whose shape is wrong is still rejected whole.
        std::fs::write(
            &json,
            r#"{"services": {"orders": {"address": "127.0.0.1:1"}}}"#,
        )
        .unwrap();
        assert!(FileDiscovery::new(&json, Duration::from_secs(1))
            .read()
            .is_err());
        std::fs::write(&json, "{not json").unwrap();
        assert!(FileDiscovery::new(&json, Duration::from_secs(1))
            .read()
            .is_err());
    }

    /// Writes `text` to a file called `name` and reads it as the adapter does.
    fn read(name: &str, text: &str) -> BTreeMap<String, Vec<Candidate>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        FileDiscovery::new(&path, Duration::from_secs(1))
            .read()
            .unwrap()
    }

    #[test]
    fn reads_json_and_toml() {
        let all = read(
            "nodes.json",
            r#"{"services": {"Orders": [{"address": "127.0.0.1:8081", "weight": 3, "zone": "a"},
                                        {"address": "[::1]:8082"}]}}"#,
        );
        let orders = &all["orders"];
        assert_eq!((orders[0].port, orders[0].weight), (8081, 3.0));
        assert_eq!(orders[0].meta.zone.as_deref(), Some("a"));
        assert_eq!((orders[1].host.as_str(), orders[1].weight), ("::1", 1.0));

        let all = read(
            "nodes.toml",
            "[[services.orders]]\naddress = \"127.0.0.1:8081\"\nweight = 2\n\
             metadata = { rev = \"b\" }\n\
             [[services.orders]]\naddress = \"127.0.0.1:8082\"\nmetadata = { rev = \"b\" }\n",
        );
        let orders = &all["orders"];
        assert_eq!((orders[0].weight, orders[1].weight), (2.0, 1.0));
        assert_eq!(orders[0].meta.metadata["rev"], "b");
        assert!(Arc::ptr_eq(&orders[0].meta, &orders[1].meta));
    }

    #[test]
    fn metadata_values_may_be_booleans_and_numbers() {
        let all = read(
            "nodes.json",
            r#"{"services": {"orders": [
                {"address": "127.0.0.1:8081", "metadata": {"secure": true, "port": 8443, "r": 0.5}}
            ]}}"#,
        );
        let meta = &all["orders"][0].meta;
        assert!(meta.secure);
        assert_eq!(meta.metadata["port"], "8443");
        assert_eq!(meta.metadata["r"], "0.5");
        let all = read(
            "nodes.toml",
            "[[services.orders]]\naddress = \"127.0.0.1:8081\"\nmetadata = { secure = true }\n",
        );
        assert!(all["orders"][0].meta.secure);
    }

    #[test]
    fn equal_labels_are_read_once_and_shared() {
        let all = read(
            "nodes.json",
            r#"{"services": {"orders": [
                {"address": "127.0.0.1:8081", "zone": "a", "tags": ["v2"],
                 "metadata": {"rev": "b", "env": "prod"}},
                {"address": "127.0.0.1:8082", "zone": "a", "tags": ["v2"],
                 "metadata": {"env": "prod", "rev": "a", "rev": "b"}},
                {"address": "127.0.0.1:8083", "zone": "a", "tags": ["v2"],
                 "metadata": {"env": "pr\u006fd", "rev": "b"}},
                {"address": "127.0.0.1:8084", "zone": "a", "tags": ["v3"],
                 "metadata": {"env": "prod", "rev": "b"}}
            ]}}"#,
        );
        let orders = &all["orders"];
        let first = &orders[0].meta;
        assert_eq!(first.metadata["rev"], "b");
        assert_eq!(first.metadata["env"], "prod");
        assert_eq!(
            (first.zone.as_deref(), first.tags.as_slice()),
            (Some("a"), &["v2".to_string()][..])
        );
        // Listed in another order, with a repeated key (the last wins, as in a map), or with
        // an escape: the same labels, one allocation.
        assert!(Arc::ptr_eq(first, &orders[1].meta));
        assert!(Arc::ptr_eq(first, &orders[2].meta));
        // Other tags: other labels.
        assert_eq!(orders[3].meta.tags, ["v3"]);
        assert_eq!(orders[3].meta.metadata, first.metadata);
    }

    #[test]
    fn rejects_bad_files_whole_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        // A misspelt field costs its entry, named; a wrong shape costs the file, with the reason.
        std::fs::write(&path, r#"{"services": {"orders": [{"adress": "x"}]}}"#).unwrap();
        let read = FileDiscovery::new(&path, Duration::from_secs(1))
            .read()
            .unwrap();
        assert!(read["orders"][0].describe().contains("adress"));
        std::fs::write(&path, r#"{"services": {"orders": {"address": "x"}}}"#).unwrap();
        let err = FileDiscovery::new(&path, Duration::from_secs(1))
            .read()
            .unwrap_err();
        assert!(err.to_string().contains("expected a sequence"), "{err}");
        let err = FileDiscovery::new(dir.path().join("missing.json"), Duration::from_secs(1))
            .read()
            .unwrap_err();
        assert!(matches!(err, DiscoveryError::Transport { .. }), "{err}");
    }
}

#[cfg(test)]
mod spacing_tests {
    use std::time::Instant;

    use tokio::sync::mpsc;

    use super::*;
    use crate::ServiceUpdate;

    /// A node file of `n` endpoints whose ports start at `first`.
    fn nodes(n: u16, first: u16) -> String {
        let list: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"address": "127.0.0.1:{}"}}"#, first + i))
            .collect();
        format!(r#"{{"services": {{"orders": [{}]}}}}"#, list.join(","))
    }

    fn replace(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    async fn next(rx: &mut mpsc::Receiver<ServiceUpdate>) -> (i64, Instant) {
        let update = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an update within 5 s")
            .expect("the source runs");
        let first = update.result.expect("the file reads")[0].port;
        (first, Instant::now())
    }

    /// Starts the adapter on a 100-endpoint file, polling every 10 ms, with `spacing`; returns
    /// the file's path and the first update's arrival.
    async fn started(
        dir: &tempfile::TempDir,
        spacing: UpdateSpacing,
    ) -> (PathBuf, mpsc::Receiver<ServiceUpdate>, Instant) {
        let path = dir.path().join("nodes.json");
        replace(&path, &nodes(100, 20000));
        let (tx, mut rx) = mpsc::channel(16);
        let source = FileDiscovery::new(&path, Duration::from_millis(10)).with_spacing(spacing);
        tokio::spawn(Box::new(source).run(vec!["orders".into()], UpdateSink::new(tx)));
        let (port, at) = next(&mut rx).await;
        assert_eq!(port, 20000);
        (path, rx, at)
    }

    #[tokio::test]
    async fn a_changing_file_is_read_again_only_after_its_spacing_and_its_newest_state_wins() {
        let dir = tempfile::tempdir().unwrap();
        // 100 endpoints with 40 s at 10,000: 400 ms between reads.
        let (path, mut rx, first) =
            started(&dir, UpdateSpacing::new(Duration::from_secs(40))).await;
        replace(&path, &nodes(100, 21000));
        tokio::time::sleep(Duration::from_millis(100)).await;
        replace(&path, &nodes(100, 22000));
        let (port, at) = next(&mut rx).await;
        assert_eq!(
            port, 22000,
            "the intermediate file is skipped, the newest read"
        );
        let gap = at - first;
        assert!(
            gap >= Duration::from_millis(380),
            "read again after {gap:?}"
        );
    }

    #[tokio::test]
    async fn without_spacing_each_change_is_read_at_the_next_poll() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut rx, first) = started(&dir, UpdateSpacing::new(Duration::ZERO)).await;
        replace(&path, &nodes(100, 21000));
        let (port, at) = next(&mut rx).await;
        assert_eq!(port, 21000);
        let gap = at - first;
        assert!(gap < Duration::from_millis(300), "read again after {gap:?}");
    }
}
