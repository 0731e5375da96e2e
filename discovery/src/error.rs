/// Why an adapter could not produce a usable answer from its registry.
///
/// Each variant is a reason to reject an update whole: the guard keeps the current node set and
/// records the error so operators can see which registry failed and how.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DiscoveryError {
    /// The registry could not be reached or the connection broke.
    #[error("{registry}: transport error: {detail}")]
    Transport {
        /// Which registry (its URL, without credentials).
        registry: String,
        /// What failed.
        detail: String,
    },
    /// The registry answered with a status that is not a success.
    #[error("{registry}: HTTP status {status}")]
    Status {
        /// Which registry.
        registry: String,
        /// The status code it returned.
        status: u16,
    },
    /// The body did not parse as the registry's format.
    #[error("{registry}: unparsable response: {detail}")]
    Parse {
        /// Which registry.
        registry: String,
        /// What the parser reported, including the field where known.
        detail: String,
    },
    /// The body exceeded the size limit, so it was not read whole.
    #[error("{registry}: response larger than {limit} bytes")]
    TooLarge {
        /// Which registry.
        registry: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The registry's index moved backwards; the adapter restarts its watch from scratch.
    #[error("{registry}: index went backwards ({from} -> {to}); watch reset")]
    IndexReset {
        /// Which registry.
        registry: String,
        /// The index held before.
        from: u64,
        /// The index the registry returned.
        to: u64,
    },
}

/// An error with every cause behind it, `outer: inner: root`, because transport errors name the
/// real cause (connection refused, timed out) only in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
