//! Reading headers whose value is a comma-separated list (Connection, TE), as both the
//! listener side and the lean client must.

use http::header::AsHeaderName;
use http::HeaderMap;

/// The trimmed elements of every `name` header in `headers`, in order; values that are not
/// text are skipped.
pub fn elements(headers: &HeaderMap, name: impl AsHeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether the `name` headers list `token`, in any case.
pub fn lists(headers: &HeaderMap, name: impl AsHeaderName, token: &str) -> bool {
    elements(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn elements_span_repeated_headers_and_ignore_case_and_spaces() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("keep-alive , X-Private"),
        );
        h.append("connection", HeaderValue::from_static("Upgrade"));
        let all: Vec<&str> = elements(&h, "connection").collect();
        assert_eq!(all, ["keep-alive", "X-Private", "Upgrade"]);
        assert!(lists(&h, "connection", "upgrade"));
        assert!(!lists(&h, "connection", "close"));
        assert!(!lists(&h, "te", "trailers"));
    }
}
