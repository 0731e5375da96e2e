//! The static adapter: node lists written into the discovery URL itself.
//!
//! `static:orders=127.0.0.1:8081@3,127.0.0.1:8082;users=[::1]:8083` — services separated by
//! `;`, endpoints by `,`, an optional weight after `@` (default 1). Tests and scripts rely on
//! this form, so it is parsed strictly: any bad entry is a configuration error, not a drop.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{validate, Candidate, Discovery, UpdateSink};

/// What was wrong with a static list, naming the piece of text at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StaticListError {
    /// A service section is not `name=endpoints`.
    #[error("section {0:?} is not of the form name=ip:port[@weight],...")]
    Section(String),
    /// A service name is empty or has characters other than letters, digits, `.`, `-`, `_`.
    #[error("service name {0:?} must be letters, digits, '.', '-' or '_'")]
    Name(String),
    /// The same service appears twice.
    #[error("service {0:?} is listed twice")]
    Repeated(String),
    /// A weight after `@` is not a non-negative number.
    #[error("endpoint {0:?}: weight must be a non-negative number")]
    Weight(String),
    /// An endpoint is not an IP and port.
    #[error("endpoint {entry:?}: {reason}")]
    Endpoint {
        /// The endpoint text.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A parsed static list, usable as a [`Discovery`] source.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticList {
    services: BTreeMap<String, Vec<Candidate>>,
}

/// True when `name` can name a service: letters, digits, `.`, `-`, `_`.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl StaticList {
    /// Parses the part after `static:`.
    pub fn parse(spec: &str) -> Result<Self, StaticListError> {
        let mut services = BTreeMap::new();
        for section in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, list) = section
                .split_once('=')
                .ok_or_else(|| StaticListError::Section(section.to_string()))?;
            let name = name.trim().to_ascii_lowercase();
            if !valid_service_name(&name) {
                return Err(StaticListError::Name(name));
            }
            let mut candidates = Vec::new();
            for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                candidates.push(parse_entry(entry)?);
            }
            if services.insert(name.clone(), candidates).is_some() {
                return Err(StaticListError::Repeated(name));
            }
        }
        Ok(StaticList { services })
    }

    /// The services the list names.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }
}

fn parse_entry(entry: &str) -> Result<Candidate, StaticListError> {
    let (address, weight) = match entry.rsplit_once('@') {
        Some((address, weight)) => {
            let w: f64 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| StaticListError::Weight(entry.to_string()))?;
            (address, w)
        }
        None => (entry, 1.0),
    };
    let mut candidate = Candidate::from_address(address);
    candidate.weight = weight;
    let checked = validate(vec![candidate.clone()]);
    if let Some(dropped) = checked.dropped.first() {
        return Err(StaticListError::Endpoint {
            entry: entry.to_string(),
            reason: format!(
                "{} (expected ip:port or [ipv6]:port)",
                dropped.reason.as_str().replace('_', " ")
            ),
        });
    }
    Ok(candidate)
}

impl Discovery for StaticList {
    fn describe(&self) -> String {
        "static".to_string()
    }

    fn run(
        self: Box<Self>,
        services: Vec<Arc<str>>,
        sink: UpdateSink,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            for service in services {
                let list = self.services.get(&*service).cloned().unwrap_or_default();
                if !sink.send(&service, Ok(list)).await {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let list =
            StaticList::parse("orders=127.0.0.1:8081@3,127.0.0.1:8082;users=[::1]:8083").unwrap();
        let orders = &list.services["orders"];
        assert_eq!(orders.len(), 2);
        assert_eq!((orders[0].port, orders[0].weight), (8081, 3.0));
        assert_eq!((orders[1].port, orders[1].weight), (8082, 1.0));
        assert_eq!(list.services["users"][0].host, "::1");
    }

    #[test]
    fn names_what_is_wrong() {
        let err = StaticList::parse("orders=127.0.0.1:8081@x").unwrap_err();
        assert_eq!(err, StaticListError::Weight("127.0.0.1:8081@x".into()));
        let err = StaticList::parse("orders=localhost:80").unwrap_err();
        assert!(err.to_string().contains("localhost:80"), "{err}");
        assert!(err.to_string().contains("unparsable address"), "{err}");
        let err = StaticList::parse("orders=127.0.0.1").unwrap_err();
        assert!(err.to_string().contains("invalid port"), "{err}");
        assert!(matches!(
            StaticList::parse("127.0.0.1:80"),
            Err(StaticListError::Section(_))
        ));
        assert!(matches!(
            StaticList::parse("a=127.0.0.1:1;a=127.0.0.1:2"),
            Err(StaticListError::Repeated(_))
        ));
    }
}
