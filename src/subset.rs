//! Subsets (`OUTRIGGER_SUBSET_<SERVICE>`): requests that carry a header value go only to the
//! nodes whose labels match (`x-canary=1 -> version=v2`: canary traffic to the new version),
//! with a stated fallback when no node matches.

use http::{HeaderMap, HeaderName, HeaderValue};
use outrigger_discovery::EndpointMeta;

/// What a request routed to an empty subset gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Every node of the service, as without the header (the default).
    All,
    /// 503 with `x-outrigger-error: no-subset`.
    Refuse,
}

/// One service's subset rule.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetRule {
    /// The request header that selects the subset...
    pub header: HeaderName,
    /// ...when it has this value.
    pub value: HeaderValue,
    /// The label the subset's nodes carry: `(key, Some(value))` for registry metadata
    /// `key=value`, `(tag, None)` for a registry tag.
    pub label: (String, Option<String>),
    /// When no node matches.
    pub fallback: Fallback,
}

impl SubsetRule {
    /// Whether a request with `headers` asks for the subset.
    #[inline]
    pub fn wanted(&self, headers: &HeaderMap) -> bool {
        headers.get(&self.header) == Some(&self.value)
    }

    /// Whether a node with labels `meta` is in the subset.
    pub fn has(&self, meta: &EndpointMeta) -> bool {
        match &self.label {
            (key, Some(value)) => meta.metadata.get(key) == Some(value),
            (tag, None) => meta.tags.iter().any(|t| t == tag),
        }
    }

    /// The rule as `/upstreams` shows it.
    pub fn describe(&self) -> String {
        let label = match &self.label {
            (key, Some(value)) => format!("{key}={value}"),
            (tag, None) => tag.clone(),
        };
        let fallback = match self.fallback {
            Fallback::All => "all",
            Fallback::Refuse => "503",
        };
        format!(
            "{}={} -> {label}; fallback={fallback}",
            self.header,
            self.value.to_str().unwrap_or("?")
        )
    }
}

impl std::str::FromStr for SubsetRule {
    type Err = String;

    /// `<header>=<value> -> <key>=<value>|<tag>[; fallback=all|503]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "<header>=<value> -> <metadata key>=<value> or <tag>, then optionally ; fallback=all or ; fallback=503 (such as x-canary=1 -> version=v2)";
        let (rule, options) = s.split_once(';').unwrap_or((s, ""));
        let (when, label) = rule.split_once("->").ok_or(expected)?;
        let (header, value) = when.trim().split_once('=').ok_or(expected)?;
        let header = HeaderName::from_bytes(header.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{header:?} is not a header name; {expected}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("{value:?} is not a header value; {expected}"))?;
        let label = label.trim();
        if label.is_empty() {
            return Err(expected.into());
        }
        let label = match label.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                (k.trim().to_string(), Some(v.trim().to_string()))
            }
            Some(_) => return Err(expected.into()),
            None => (label.to_string(), None),
        };
        let fallback = match options.trim() {
            "" | "fallback=all" => Fallback::All,
            "fallback=503" => Fallback::Refuse,
            _ => return Err(expected.into()),
        };
        Ok(SubsetRule {
            header,
            value,
            label,
            fallback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r: SubsetRule = "X-Canary=1 -> version=v2; fallback=503"
            .parse()
            .expect("valid");
        assert_eq!(r.describe(), "x-canary=1 -> version=v2; fallback=503");
        let mut h = HeaderMap::new();
        assert!(!r.wanted(&h));
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert!(r.wanted(&h));
        let mut meta = EndpointMeta::default();
        assert!(!r.has(&meta));
        meta.metadata.insert("version".into(), "v2".into());
        assert!(r.has(&meta));
        let tag: SubsetRule = "x-canary=1 -> canary".parse().expect("valid");
        assert_eq!(tag.fallback, Fallback::All);
        meta.tags.push("canary".into());
        assert!(tag.has(&meta));
        for bad in [
            "x-canary=1",
            "x-canary -> v2",
            "x canary=1 -> v2",
            "a=1 -> ",
            "a=1 -> v2; fallback=maybe",
        ] {
            assert!(bad.parse::<SubsetRule>().is_err(), "{bad}");
        }
    }
}
