use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::{Candidate, Endpoint, SharedMeta};

/// Why one registry entry was left out of a node set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The host is not an IP literal.
    UnparsableAddress,
    /// The host is 0.0.0.0 or `::`, which names no node.
    UnspecifiedAddress,
    /// The port is 0 or above 65535.
    InvalidPort,
    /// The weight is negative, NaN or infinite.
    InvalidWeight,
    /// The same address was listed again; the copies were merged.
    Duplicate,
    /// The entry could not be read (a missing object, a `null` or a wrong type where the
    /// registry's format has a value); the entry's description names the field.
    MalformedEntry,
    /// The entry names no port that plain HTTP can use (Eureka: `port` has
    /// `@enabled: false`, and only the TLS `securePort` is enabled).
    NoUsablePort,
}

impl DropReason {
    /// The label used in metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnparsableAddress => "unparsable_address",
            DropReason::UnspecifiedAddress => "unspecified_address",
            DropReason::InvalidPort => "invalid_port",
            DropReason::InvalidWeight => "invalid_weight",
            DropReason::Duplicate => "duplicate",
            DropReason::MalformedEntry => "malformed_entry",
            DropReason::NoUsablePort => "no_usable_port",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry that validation left out, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    /// The entry as the registry gave it (`host:port`).
    pub entry: String,
    /// Why it was left out.
    pub reason: DropReason,
}

/// The outcome of validating a registry's list: the usable endpoints and what was dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Usable endpoints, at most one per address.
    pub endpoints: Vec<Endpoint>,
    /// Entries left out, in the order met.
    pub dropped: Vec<Dropped>,
}

/// Turns raw candidates into endpoints, dropping invalid entries one by one.
///
/// One bad entry never costs the good ones: each is judged alone. Duplicates are merged by
/// keeping the first and counting the rest, since registries (and copy-paste in files) repeat
/// nodes and a repeated node must not get double traffic.
pub fn validate(candidates: Vec<Candidate>) -> Validated {
    // Indexed by position in the registry's list, so that what is dropped is reported in the
    // order met, and the first of several copies is the one kept.
    let mut dropped: Vec<(usize, Dropped)> = Vec::new();
    let mut valid: Vec<(Endpoint, usize, String)> = Vec::with_capacity(candidates.len());
    // Nodes with equal labels share one copy, whichever adapter built them.
    let mut shared = SharedMeta::new();
    for (index, candidate) in candidates.into_iter().enumerate() {
        match check(&candidate) {
            Ok(addr) => valid.push((
                Endpoint {
                    addr,
                    weight: candidate.weight,
                    priority: candidate.priority,
                    meta: shared.share(candidate.meta),
                },
                index,
                // Kept only to name a duplicate as the registry wrote it.
                candidate.host,
            )),
            Err(reason) => dropped.push((
                index,
                Dropped {
                    entry: candidate.describe(),
                    reason,
                },
            )),
        }
    }
    // A stable sort, near-linear on the address order registries mostly list nodes in; a
    // BTreeMap paid two searches and a node allocation per entry (a fifth of a 10,000-node
    // update's CPU, bench/HISTORY.md). Stable keeps copies in list order, so the first wins.
    valid.sort_by_key(|a| a.0.addr);
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(valid.len());
    for (endpoint, index, host) in valid {
        if endpoints
            .last()
            .is_some_and(|kept| kept.addr == endpoint.addr)
        {
            let entry = Candidate::new(host, i64::from(endpoint.addr.port())).describe();
            let reason = DropReason::Duplicate;
            dropped.push((index, Dropped { entry, reason }));
            continue;
        }
        endpoints.push(endpoint);
    }
    dropped.sort_by_key(|(index, _)| *index);
    Validated {
        endpoints,
        dropped: dropped.into_iter().map(|(_, d)| d).collect(),
    }
}

fn check(candidate: &Candidate) -> Result<SocketAddr, DropReason> {
    if let Some((reason, _)) = &candidate.refused {
        return Err(*reason);
    }
    let host = candidate
        .host
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip: IpAddr = host.parse().map_err(|_| DropReason::UnparsableAddress)?;
    if ip.is_unspecified() {
        return Err(DropReason::UnspecifiedAddress);
    }
    let port = u16::try_from(candidate.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(DropReason::InvalidPort)?;
    if !candidate.weight.is_finite() || candidate.weight < 0.0 {
        return Err(DropReason::InvalidWeight);
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(v: &Validated) -> Vec<DropReason> {
        v.dropped.iter().map(|d| d.reason).collect()
    }

    #[test]
    fn drops_each_invalid_entry_and_keeps_the_rest() {
        let mut negative = Candidate::new("127.0.0.1", 9004);
        negative.weight = -1.0;
        let mut nan = Candidate::new("127.0.0.1", 9005);
        nan.weight = f64::NAN;
        let mut zero_weight = Candidate::new("127.0.0.1", 9006);
        zero_weight.weight = 0.0;
        let v = validate(vec![
            Candidate::new("127.0.0.1", 9001),
            Candidate::new("orders.internal", 9002),
            Candidate::new("0.0.0.0", 9003),
            Candidate::new("::", 9003),
            Candidate::new("127.0.0.1", 0),
            Candidate::new("127.0.0.1", 65536),
            Candidate::new("127.0.0.1", -5),
            negative,
            nan,
            zero_weight,
            Candidate::new("127.0.0.1", 9001),
            Candidate::new("[::1]", 9007),
        ]);
        let kept: Vec<String> = v.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(kept, ["127.0.0.1:9001", "127.0.0.1:9006", "[::1]:9007"]);
        assert_eq!(
            reasons(&v),
            [
                DropReason::UnparsableAddress,
                DropReason::UnspecifiedAddress,
                DropReason::UnspecifiedAddress,
                DropReason::InvalidPort,
                DropReason::InvalidPort,
                DropReason::InvalidPort,
                DropReason::InvalidWeight,
                DropReason::InvalidWeight,
                DropReason::Duplicate,
            ]
        );
        assert_eq!(v.dropped[0].entry, "orders.internal:9002");
    }

    #[test]
    fn nodes_with_equal_labels_share_one_copy() {
        // As a registry's parser makes them: each node its own copy of the same labels.
        let labelled = |port, rev: &str| {
            let mut c = Candidate::new("127.0.0.1", port);
            c.meta_mut().metadata.insert("rev".into(), rev.into());
            c
        };
        let v = validate(vec![
            labelled(9001, "a"),
            labelled(9002, "a"),
            labelled(9003, "b"),
        ]);
        let meta: Vec<_> = v.endpoints.iter().map(|e| &e.meta).collect();
        assert!(std::sync::Arc::ptr_eq(meta[0], meta[1]));
        assert_eq!(meta[2].metadata["rev"], "b");
    }
}
