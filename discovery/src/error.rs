/// Why an adapter could not produce a usable answer from its registry.
///
/// Each variant is a reason to reject an update whole: the guard keeps the current node set and
/// records the error so operators can see which registry failed and how.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DiscoveryError {
    /// The registry could not be reached or the connection broke.
    #[error("{}: transport error: {detail}", redact_secrets(.registry))]
    Transport {
        /// Which registry (its URL, without credentials).
        registry: String,
        /// What failed.
        detail: String,
    },
    /// The registry answered with a status that is not a success.
    #[error("{}: HTTP status {status}", redact_secrets(.registry))]
    Status {
        /// Which registry.
        registry: String,
        /// The status code it returned.
        status: u16,
    },
    /// The body did not parse as the registry's format.
    #[error("{}: unparsable response: {detail}", redact_secrets(.registry))]
    Parse {
        /// Which registry.
        registry: String,
        /// What the parser reported, including the field where known.
        detail: String,
    },
    /// The body exceeded the size limit, so it was not read whole.
    #[error("{}: response larger than {limit} bytes", redact_secrets(.registry))]
    TooLarge {
        /// Which registry.
        registry: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The answer listed entries, and none of them can be routed to (a source of a service
    /// with several refuses such an answer, keeping its last usable nodes).
    #[error("{}: every one of its {count} entries is invalid", redact_secrets(.registry))]
    AllInvalid {
        /// Which registry.
        registry: String,
        /// How many entries it listed.
        count: usize,
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

impl DiscoveryError {
    /// A transport error of an HTTP registry client, rendered without the request's URL: the
    /// URL can carry credentials (Nacos's `accessToken` query parameter), and no credential
    /// may reach a log line, `/upstreams` or a metric. Whatever the error's causes say is
    /// passed through [`redact_secrets`] as well.
    pub fn http_transport(registry: &str, context: &str, e: reqwest::Error) -> DiscoveryError {
        let detail = redact_secrets(&error_chain(&e.without_url()));
        DiscoveryError::Transport {
            registry: redact_secrets(registry),
            detail: if context.is_empty() {
                detail
            } else {
                format!("{context}: {detail}")
            },
        }
    }
}

/// Query parameters and fields whose values are credentials, in any case.
const SECRET_KEYS: [&str; 5] = ["accesstoken", "token", "password", "passwd", "secret"];

/// `text` with the value of every `key=value` whose key names a credential replaced by `***`,
/// and any `user:password@` in a URL replaced by `***@`.
pub fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let (before, after) = rest.split_at(eq);
        out.push_str(before);
        out.push('=');
        let key_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let key = before[key_start..].to_ascii_lowercase();
        // A quoted value runs to its closing quote.
        let value_len = match after[1..].chars().next() {
            Some(q @ ('"' | '\'')) => {
                closing_quote(&after[2..], q).map_or(after.len() - 1, |end| end + 2)
            }
            _ => after[1..]
                .find(['&', ' ', ')', ',', ';', '"', '\'', '#'])
                .unwrap_or(after.len() - 1),
        };
        if SECRET_KEYS.iter().any(|k| key.ends_with(k)) && value_len > 0 {
            out.push_str("***");
        } else {
            out.push_str(&after[1..1 + value_len]);
        }
        rest = &after[1 + value_len..];
    }
    out.push_str(rest);
    redact_userinfo(&out)
}

/// The index in `text` of the first `quote` not escaped by a backslash.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// `text` with the user info of every `scheme://user:password@host` replaced by `***@`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(['/', ' ', '?', '#', ')', '"'])
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&after[at..end]);
            }
            None => out.push_str(&after[..end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_survive_rendering() {
        let text = "error sending request for url (http://127.0.0.1:8848/nacos/v1/ns/instance/list?serviceName=a&accessToken=eyJ.secret.x&healthyOnly=true): connection refused";
        let r = redact_secrets(text);
        assert!(!r.contains("eyJ"), "{r}");
        assert!(r.contains("accessToken=***&healthyOnly=true"), "{r}");
        let r =
            redact_secrets("GET http://user:pa55@eureka:8761/eureka/apps failed; password=hunter2");
        assert!(!r.contains("pa55") && !r.contains("hunter2"), "{r}");
        assert!(r.contains("http://***@eureka:8761/eureka/apps"), "{r}");
        assert_eq!(redact_secrets("plain text = fine"), "plain text = fine");
        let r = redact_secrets(r#"option token="s3cret": unknown; acl_token='x y' left"#);
        assert_eq!(r, "option token=***: unknown; acl_token=*** left");
        // As Debug prints a quoted value: escaped quotes inside.
        let r = redact_secrets(r#"option token="\"SECRETTOK2\"": one of dc"#);
        assert_eq!(r, "option token=***: one of dc");
        let e = DiscoveryError::Status {
            registry: "http://x:SECRETPW2@127.0.0.1:18500".into(),
            status: 500,
        };
        assert_eq!(e.to_string(), "http://***@127.0.0.1:18500: HTTP status 500");
    }
}
