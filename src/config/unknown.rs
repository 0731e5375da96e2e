//! `OUTRIGGER_*` variables that no setting reads. A mistyped name
//! (`OUTRIGGER_ZONE_ROUTING_ENABLE`) would otherwise do nothing without a word; each is
//! warned about at start, with the closest name Outrigger knows. A warning rather than an
//! error: Kubernetes gives every pod variables named after the Services of its namespace, and
//! a Service called `outrigger` brings `OUTRIGGER_SERVICE_HOST` and `OUTRIGGER_PORT_*`.

use clap::CommandFactory;

use super::Args;

/// Settings that take a `_<SERVICE>` override besides those of `per_service::OVERRIDES`; the
/// service part is checked where each is read.
const PER_SERVICE: &[&str] = &[
    "OUTRIGGER_LB",
    "OUTRIGGER_HC",
    "OUTRIGGER_UPSTREAM_PROTOCOL",
    "OUTRIGGER_UPSTREAM_TLS",
    "OUTRIGGER_DNS",
    "OUTRIGGER_DISCOVERY",
];

/// One warning for each variable of `vars` that starts with `OUTRIGGER_` and that no setting
/// reads, naming the closest known name when one is near.
pub(super) fn unknown_variables(
    vars: &[(String, String)],
    overrides: &[&str],
    services: &[&str],
) -> Vec<String> {
    let globals: Vec<String> = Args::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let prefixes: Vec<&str> = PER_SERVICE.iter().chain(overrides).copied().collect();
    let known = |var: &str| {
        globals.iter().any(|g| g == var)
            || prefixes.iter().any(|p| {
                var.strip_prefix(p)
                    .is_some_and(|rest| rest.len() > 1 && rest.starts_with('_'))
            })
    };
    vars.iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("OUTRIGGER_") && !known(k) && !foreign(k))
        .map(|var| warning(var, &globals, &prefixes, services))
        .collect()
}

/// Kubernetes' service links for a Service whose name starts with `outrigger`
/// (`OUTRIGGER_ADMIN_SERVICE_HOST`, `OUTRIGGER_PORT_15001_TCP_ADDR`), and the test and
/// benchmark scripts' own variables.
fn foreign(var: &str) -> bool {
    service_link(var) || var.starts_with("OUTRIGGER_TEST_BIN") || var == "OUTRIGGER_BIN"
}

/// Whether `var` has the shape of a Kubernetes service link (`<NAME>_SERVICE_HOST`,
/// `<NAME>_SERVICE_PORT[_<PORT NAME>]`, `<NAME>_PORT[_<n>_<PROTOCOL>[_...]]`): a Service
/// named `outrigger-lb` gives every pod `OUTRIGGER_LB_SERVICE_HOST`, which a `_<SERVICE>`
/// override must not read as naming a service `service-host`, unless one is routed.
pub(super) fn service_link(var: &str) -> bool {
    var.ends_with("_SERVICE_HOST")
        || var.contains("_SERVICE_PORT")
        || var.ends_with("_PORT")
        || var.split("_PORT_").nth(1).is_some_and(|rest| {
            let mut parts = rest.split('_');
            parts.next().is_some_and(|p| p.parse::<u16>().is_ok())
                && parts
                    .next()
                    .is_some_and(|p| ["TCP", "UDP", "SCTP"].contains(&p))
        })
}

/// The warning for `var`, with the closest known name when one is near.
fn warning(var: &str, globals: &[String], prefixes: &[&str], services: &[&str]) -> String {
    if prefixes.contains(&var) {
        return format!("{var} is read per service only, as {var}_<SERVICE>; it is ignored");
    }
    let upper = var.to_ascii_uppercase();
    let names = || {
        globals
            .iter()
            .map(String::as_str)
            .chain(prefixes.iter().copied())
    };
    let per_service = |n: &str| services.iter().any(|s| super::service_var(n, s) == upper);
    if let Some(name) = names().find(|n| per_service(n)) {
        return format!("{var} is not a setting Outrigger reads ({name} takes no _<SERVICE> override); it is ignored");
    }
    // Compared without the common `OUTRIGGER_`, which would make every name look close.
    let tail = |n: &str| n.trim_start_matches("OUTRIGGER_").to_string();
    let closest = names()
        .map(|name| {
            let (a, b) = (tail(&upper), tail(name));
            let near = strsim::levenshtein(&a, &b) <= 3 || strsim::jaro_winkler(&a, &b) >= 0.85;
            (strsim::jaro_winkler(&a, &b), near, name)
        })
        .filter(|(_, near, _)| *near)
        .max_by(|x, y| x.0.total_cmp(&y.0));
    match closest {
        Some((_, _, name)) => {
            format!("{var} is not a setting Outrigger reads (did you mean {name}?); it is ignored")
        }
        None => {
            format!("{var} is not a setting Outrigger reads (see outrigger --help); it is ignored")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warned(names: &[&str]) -> Vec<String> {
        let vars: Vec<(String, String)> = names
            .iter()
            .map(|n| (n.to_string(), "x".to_string()))
            .collect();
        unknown_variables(
            &vars,
            &["OUTRIGGER_ZONE_ROUTING_ENABLED", "OUTRIGGER_RETRIES"],
            &["orders"],
        )
    }

    #[test]
    fn typos_are_named_with_the_closest_setting_and_known_names_pass() {
        let w = warned(&["OUTRIGGER_ZONE_ROUTING_ENABLE"]);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("did you mean OUTRIGGER_ZONE_ROUTING_ENABLED?"),
            "{w:?}"
        );
        let w = warned(&["OUTRIGGER_DNS"]);
        assert!(
            w[0].contains("per service only, as OUTRIGGER_DNS_<SERVICE>"),
            "{w:?}"
        );
        let w = warned(&["OUTRIGGER_ZONES"]);
        assert!(w[0].contains("did you mean OUTRIGGER_ZONE?"), "{w:?}");
        assert!(warned(&["OUTRIGGER_FROBNICATE_EVERYTHING_NOW"])[0].contains("outrigger --help"));
        // Per-service overrides, Kubernetes service links and other programs' variables pass.
        let fine = [
            "OUTRIGGER_LISTEN",
            "OUTRIGGER_ZONE",
            "OUTRIGGER_RETRIES_ORDERS",
            "OUTRIGGER_LB_USER_PROFILE",
            "OUTRIGGER_UPSTREAM_TLS_CA_ORDERS",
            "OUTRIGGER_DISCOVERY_ORDERS",
            "OUTRIGGER_SERVICE_HOST",
            "OUTRIGGER_PORT_15001_TCP_ADDR",
            "PATH",
        ];
        assert_eq!(warned(&fine), Vec::<String>::new());
        // A setting without overrides takes no service suffix.
        let w = warned(&["OUTRIGGER_LISTEN_ORDERS"]);
        assert!(
            w[0].contains("OUTRIGGER_LISTEN takes no _<SERVICE> override"),
            "{w:?}"
        );
        // Case, longer and shorter spellings.
        for (typo, meant) in [
            ("OUTRIGGER_lb", "OUTRIGGER_LB"),
            ("OUTRIGGER_STATE_DIRECTORY", "OUTRIGGER_STATE_DIR"),
            ("OUTRIGGER_EUREKA_USERNAME", "OUTRIGGER_EUREKA_USER"),
        ] {
            let w = warned(&[typo]);
            assert!(
                w[0].contains(&format!("did you mean {meant}?")),
                "{typo}: {w:?}"
            );
        }
        // Service links of any Service whose name starts with `outrigger`.
        let links = [
            "OUTRIGGER_ADMIN_SERVICE_HOST",
            "OUTRIGGER_ADMIN_SERVICE_PORT_HTTP",
            "OUTRIGGER_ADMIN_PORT",
            "OUTRIGGER_ADMIN_PORT_15000_TCP_ADDR",
        ];
        assert_eq!(warned(&links), Vec::<String>::new());
    }
}
