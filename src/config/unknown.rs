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
pub(super) fn unknown_variables(vars: &[(String, String)], overrides: &[&str]) -> Vec<String> {
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
    // Kubernetes' service links for a Service named `outrigger`, and the test and benchmark
    // scripts' own.
    let foreign = |var: &str| {
        [
            "OUTRIGGER_SERVICE_HOST",
            "OUTRIGGER_SERVICE_PORT",
            "OUTRIGGER_PORT",
            "OUTRIGGER_TEST_BIN",
            "OUTRIGGER_BIN",
        ]
        .iter()
        .any(|p| var.starts_with(p))
    };
    vars.iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("OUTRIGGER_") && !known(k) && !foreign(k))
        .map(|var| {
            if prefixes.contains(&var) {
                return format!("{var} is read per service only, as {var}_<SERVICE>; it is ignored");
            }
            let closest = globals
                .iter()
                .map(String::as_str)
                .chain(prefixes.iter().copied())
                .map(|name| (strsim::levenshtein(var, name), name))
                .min();
            match closest {
                Some((distance, name)) if distance <= 3 => {
                    format!("{var} is not a setting Outrigger reads (did you mean {name}?); it is ignored")
                }
                _ => format!("{var} is not a setting Outrigger reads (see outrigger --help); it is ignored"),
            }
        })
        .collect()
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
        assert_eq!(warned(&["OUTRIGGER_LISTEN_ORDERS"]).len(), 1);
    }
}
