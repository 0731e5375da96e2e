//! Comparing an emulator's answers with real captures, key by key.

use serde_json::Value;

/// The keys (as paths like `[0].Service.Weights`) that `captured` has and `ours` lacks,
/// recursively, looking at the first element of arrays. Objects under keys for which
/// `user_data` is true hold user data (metadata), not protocol shape: only their presence
/// counts.
pub fn missing_keys(
    captured: &Value,
    ours: &Value,
    user_data: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    walk(captured, ours, "", user_data, &mut out);
    out
}

fn walk(
    captured: &Value,
    ours: &Value,
    at: &str,
    user_data: &dyn Fn(&str) -> bool,
    out: &mut Vec<String>,
) {
    match (captured, ours) {
        (Value::Object(c), Value::Object(o)) => {
            for (k, v) in c {
                match o.get(k) {
                    None => out.push(format!("{at}.{k}")),
                    Some(_) if user_data(k) => {}
                    Some(ov) => walk(v, ov, &format!("{at}.{k}"), user_data, out),
                }
            }
        }
        (Value::Array(c), Value::Array(o)) => {
            if let (Some(c0), Some(o0)) = (c.first(), o.first()) {
                walk(c0, o0, &format!("{at}[0]"), user_data, out);
            }
        }
        _ => {}
    }
}
