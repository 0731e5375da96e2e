//! A node file for the `file://` source, rewritten atomically (a temporary file renamed over
//! it) as an operator's tooling or a registry sync would change it.

use std::path::{Path, PathBuf};

/// A node file in a directory of its own, removed when dropped.
pub struct NodeFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Default for NodeFile {
    fn default() -> Self {
        NodeFile::new()
    }
}

impl NodeFile {
    /// An empty directory; the file does not exist until written.
    pub fn new() -> NodeFile {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("nodes.json");
        NodeFile { dir, path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the file is in, for anything else a test keeps beside it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The source URL naming the file, for `OUTRIGGER_DISCOVERY`.
    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Replaces the file with `body` at once.
    pub fn write_raw(&self, body: &str) {
        let tmp = self.dir.path().join("nodes.tmp");
        std::fs::write(&tmp, body).expect("write the node file");
        std::fs::rename(&tmp, &self.path).expect("rename the node file");
    }

    /// Replaces the file with `services`, each a name and its entries as JSON objects
    /// (`{"address": "127.0.0.1:8081", "zone": "a"}`).
    pub fn write(&self, services: &[(&str, &[String])]) {
        let services: Vec<String> = services
            .iter()
            .map(|(name, entries)| format!(r#""{name}": [{}]"#, entries.join(",")))
            .collect();
        self.write_raw(&format!(r#"{{"services": {{{}}}}}"#, services.join(",")));
    }

    /// Replaces the file with one service listing `addresses` (weight 1, no labels).
    pub fn write_addresses(&self, service: &str, addresses: &[String]) {
        let entries: Vec<String> = addresses
            .iter()
            .map(|a| format!(r#"{{"address": "{a}"}}"#))
            .collect();
        self.write(&[(service, &entries)]);
    }

    /// Replaces the file with one service listing the test nodes `nodes`.
    pub fn write_nodes(&self, service: &str, nodes: &[&crate::TestUpstream]) {
        let addresses: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        self.write_addresses(service, &addresses);
    }

    /// Removes the file, as a registry that is gone.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
