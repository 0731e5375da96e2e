//! `/`: the dashboard, an HTML page rendered here from the same views as `/upstreams` and each
//! service's history, with no front-end build chain. Its buttons send the admin writes
//! (pin, unpin, confirm, reject) with `fetch`, which can add the `X-Outrigger-Admin` header
//! because the page is served from the admin API's own origin.
//!
//! Every value from a registry is escaped; the page's one script carries a nonce, and the
//! Content-Security-Policy allows no other.

use std::fmt::Write;

use serde_json::Value;

use super::views::upstream_json;
use crate::upstream::Upstream;

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as text: strings bare, null as an empty cell.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => esc(s),
        Value::Null => String::new(),
        other => esc(&other.to_string()),
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.8em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
.state{padding:.1em .5em;border-radius:.3em;color:#fff}.fresh{background:#2a7}.held{background:#d80}\
.stale{background:#c33}.restored{background:#57c}.waiting{background:#888}.pinned{background:#83c}\
.down{color:#c33}.note{color:#666}button{margin-right:.4em}";

const SCRIPT: &str = "document.querySelectorAll('button[data-action]').forEach(b=>b.addEventListener('click',async()=>{\
const s=encodeURIComponent(b.dataset.service),a=b.dataset.action;\
let url='/upstreams/'+s+'/pin',method='POST';\
if(a==='pin'&&b.dataset.version){url+='?version='+encodeURIComponent(b.dataset.version)}\
if(a==='unpin'){method='DELETE'}if(a==='confirm'){url='/upstreams/'+s+'/pending/confirm'}\
if(a==='reject'){url='/upstreams/'+s+'/pending/reject'}\
const r=await fetch(url,{method,headers:{'X-Outrigger-Admin':'1'}});\
const body=await r.json().catch(()=>({}));\
document.getElementById('result').textContent=(r.ok?'done: '+body.result:'refused: '+(body.error||r.status));\
if(r.ok){location.reload()}}));";

/// The page, with `nonce` on its script.
pub(super) fn render(upstreams: &[std::sync::Arc<Upstream>], nonce: &str) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Outrigger</title>\
         <style>{STYLE}</style></head><body><h1>Outrigger</h1>\
         <p class=note>Services, their node sets and the last decisions about them. Actions are \
         admin writes: from this machine, or with the admin token.</p><p id=result></p>"
    );
    for u in upstreams {
        service(&mut page, u);
    }
    let _ = write!(
        page,
        "<script nonce=\"{nonce}\">{SCRIPT}</script></body></html>"
    );
    page
}

fn button(page: &mut String, service: &str, action: &str, version: Option<u64>, label: &str) {
    let version = version.map_or(String::new(), |v| format!(" data-version=\"{v}\""));
    let _ = write!(
        page,
        "<button data-service=\"{}\" data-action=\"{action}\"{version}>{label}</button>",
        esc(service)
    );
}

fn service(page: &mut String, u: &Upstream) {
    let v = upstream_json(u);
    let name = u.name.to_string();
    let state = v["state"].as_str().unwrap_or("waiting");
    let _ = write!(
        page,
        "<h2 id=\"svc-{n}\">{n} <span class=\"state {s}\">{s}</span></h2>\
         <p>source {src} · policy {pol} · last change {chg}</p>",
        n = esc(&name),
        s = esc(state),
        src = show(&v["source"]),
        pol = show(&v["policy"]),
        chg = show(&v["last_change"]),
    );
    if v["pin"].is_object() {
        let _ = write!(
            page,
            "<p>Pinned to version {} since {} by {}. Registry: {}</p>",
            show(&v["pin"]["version"]),
            show(&v["pin"]["since"]),
            show(&v["pin"]["by"]),
            behind_pin(&v["pending_behind_pin"]),
        );
        button(page, &name, "unpin", None, "Unpin");
    } else {
        button(page, &name, "pin", None, "Pin the set in use");
    }
    if v["pending"].is_object() {
        let _ = write!(
            page,
            "<p>Held update: {} (since {}, applies at {}, {} endpoints). ",
            show(&v["pending"]["reason"]),
            show(&v["pending"]["since"]),
            show(&v["pending"]["applies_at"]),
            v["pending"]["endpoints"].as_array().map_or(0, Vec::len),
        );
        button(page, &name, "confirm", None, "Apply now");
        button(page, &name, "reject", None, "Reject");
        page.push_str("</p>");
    }
    if let Some(e) = v["last_error"].as_object() {
        let _ = write!(
            page,
            "<p class=down>Last registry error: {} ({})</p>",
            show(&e["message"]),
            show(&e["at"])
        );
    }
    sources_and_zones(page, &v);
    endpoints(page, &v["endpoints"]);
    let history = u
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .to_json();
    decisions(page, &name, &history);
}

/// A service's sources, when it has several, and its zone-aware routing, when in effect.
fn sources_and_zones(page: &mut String, v: &Value) {
    for src in v["sources"].as_array().into_iter().flatten() {
        let failing = src["state"] == "failing";
        let _ = write!(
            page,
            "<p{cls}>Source {}: {}, {} endpoints{}</p>",
            show(&src["source"]),
            show(&src["state"]),
            show(&src["endpoints"]),
            if failing {
                format!(
                    " kept; refused since {}: {}",
                    show(&src["error"]["since"]),
                    show(&src["error"]["message"])
                )
            } else {
                String::new()
            },
            cls = if failing { " class=down" } else { "" },
        );
    }
    if let Some(z) = v["zone_routing"].as_object() {
        let zone = show(&v["settings"]["zone"]["local"]);
        let expected = z["expected_local"].as_f64().unwrap_or(0.0) * 100.0;
        let count = |key: &str| {
            let n = z[key].as_u64().unwrap_or(0);
            format!("{n} endpoint{}", if n == 1 { "" } else { "s" })
        };
        let _ = match (z["active"] == true, z["spill_endpoints"].as_u64().unwrap_or(0)) {
            (true, 0) => write!(
                page,
                "<p>Zone {zone}: {expected:.0}% of requests stay in the zone, on its {} in it</p>",
                count("local_endpoints"),
            ),
            (true, _) => write!(
                page,
                "<p>Zone {zone}: {expected:.0}% of requests expected in the zone, on its {} in it; the rest spill to {} in other zones</p>",
                count("local_endpoints"),
                count("spill_endpoints"),
            ),
            (false, _) => write!(
                page,
                "<p>Zone {zone}: zones ignored ({}); {expected:.0}% of requests land in the zone by weight</p>",
                show(&z["off_because"]),
            ),
        };
    }
}

fn behind_pin(v: &Value) -> String {
    match v {
        Value::Null => "no answer since the pin".into(),
        v if v.get("error").is_some() => format!("error: {}", show(&v["error"])),
        v => format!(
            "{} endpoints not applied (+{} −{})",
            show(&v["endpoints"]),
            v["diff"]["added"].as_array().map_or(0, Vec::len),
            v["diff"]["removed"].as_array().map_or(0, Vec::len),
        ),
    }
}

fn endpoints(page: &mut String, list: &Value) {
    page.push_str("<table><tr><th>endpoint<th>weight<th>zone<th>healthy<th>check<th>ejected until<th>last failure<th>sources</tr>");
    for e in list.as_array().into_iter().flatten() {
        let healthy = e["healthy"] == true;
        let _ = write!(
            page,
            "<tr{cls}><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}</tr>",
            show(&e["address"]),
            show(&e["weight"]),
            show(&e["zone"]),
            if healthy { "yes" } else { "no" },
            show(&e["health"]["active"]),
            show(&e["health"]["ejected_until"]),
            show(&e["health"]["last_failure"]),
            e["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .map(show)
                .collect::<Vec<_>>()
                .join(", "),
            cls = if healthy { "" } else { " class=down" },
        );
    }
    page.push_str("</table>");
}

fn decisions(page: &mut String, service: &str, history: &Value) {
    page.push_str(
        "<table><tr><th>version<th>at<th>result<th>source<th>endpoints<th>change<th></tr>",
    );
    for h in history.as_array().into_iter().flatten() {
        let count = |k: &str| h["diff"][k].as_array().map_or(0, Vec::len);
        let mut change = format!(
            "+{} −{} ~{}",
            count("added"),
            count("removed"),
            count("changed")
        );
        if let Some(reason) = h["reason"].as_str() {
            let _ = write!(change, " · {}", esc(reason));
        }
        let _ = write!(
            page,
            "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>",
            show(&h["version"]),
            show(&h["at"]),
            show(&h["result"]),
            show(&h["source"]),
            show(&h["endpoints"]),
            change,
        );
        if h["endpoints"].as_u64().is_some_and(|n| n > 0) {
            button(page, service, "pin", h["version"].as_u64(), "Pin this set");
        }
        page.push_str("</tr>");
    }
    page.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(show(&Value::from("<b>")), "&lt;b&gt;");
        assert_eq!(show(&Value::Null), "");
    }
}
