//! The configuration's layering and checks, and `docs/configuration.md` held to every option
//! and default.

use std::time::Duration;

use super::defaults::shown;
use super::*;

#[test]
fn later_layers_win_and_defaults_fill_the_rest() {
    let file: Options =
        toml::from_str("history-size = 5\nheartbeat = 7\nanonymous = true").unwrap();
    let flags = Options {
        history_size: Some(9),
        ..Options::default()
    };
    let config = flags.over(file).resolve().unwrap();
    assert_eq!(config.bus.history_size, 9);
    assert_eq!(config.heartbeat, Duration::from_secs(7));
    assert!(config.auth.anonymous);
    assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
    assert_eq!(config.bus_url, "memory://");
}

#[test]
fn history_keeps_minutes_by_default_and_ids_as_long_as_history() {
    let config = Config::default();
    assert_eq!(
        (
            config.bus.history_size,
            config.bus.history_ttl_secs,
            config.bus.history_id_ttl_secs
        ),
        (100_000, 300, 300)
    );
    let no_age: Options = toml::from_str("history-ttl = 0").unwrap();
    let config = no_age.resolve().unwrap();
    assert_eq!(
        (config.bus.history_ttl_secs, config.bus.history_id_ttl_secs),
        (0, 86_400)
    );
    let both: Options = toml::from_str("history-ttl = 60\nhistory-id-ttl = 7").unwrap();
    let config = both.resolve().unwrap();
    assert_eq!(
        (config.bus.history_ttl_secs, config.bus.history_id_ttl_secs),
        (60, 7)
    );
}

#[test]
fn the_former_redis_prefix_name_is_still_accepted() {
    let file: Options = toml::from_str("redis-prefix = \"old\"").unwrap();
    assert_eq!(file.resolve().unwrap().bus.prefix, "old");
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(["tidings", "--redis-prefix", "flag"]).unwrap();
    assert_eq!(cli.options.bus_prefix.as_deref(), Some("flag"));
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let err = toml::from_str::<Options>("histroy-size = 5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("histroy-size"), "{err}");
    let err = Options {
        listen: Some("nowhere".into()),
        ..Options::default()
    }
    .resolve()
    .unwrap_err();
    assert_eq!(err.option(), Some("listen"), "{err}");
    let err = Options {
        heartbeat: Some(0),
        ..Options::default()
    }
    .resolve()
    .unwrap_err();
    assert_eq!(err.option(), Some("heartbeat"), "{err}");
    for (origins, ok) in [
        (
            vec!["https://app.example.com", "http://localhost:8080"],
            true,
        ),
        (vec!["*"], true),
        (vec!["https://app.example.com/"], false),
        (vec!["app.example.com"], false),
    ] {
        let result = Options {
            cors_origin: origins.iter().map(|o| o.to_string()).collect(),
            ..Options::default()
        }
        .resolve();
        assert_eq!(result.is_ok(), ok, "{origins:?}");
    }
    let err = Options {
        jwt_leeway: Some(u64::MAX),
        ..Options::default()
    }
    .resolve()
    .unwrap_err();
    assert_eq!(err.option(), Some("jwt-leeway"), "{err}");
}

/// The configuration's documentation, which the tests below hold to the code.
const CONFIGURATION_MD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/configuration.md"
));

/// The `tidings serve` options table of `docs/configuration.md`: by flag, its environment
/// variable, file key and default cells.
fn documented_options() -> Vec<(String, [String; 3])> {
    let section = CONFIGURATION_MD
        .split("\n## ")
        .find(|s| s.starts_with("`tidings serve` options"))
        .expect("docs/configuration.md has a `tidings serve` options section");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `--"))
        .map(|row| {
            let cells: Vec<String> = row
                .split(" | ")
                .map(|cell| cell.trim().trim_matches('`').to_owned())
                .collect();
            let flag = cells[0]
                .split([' ', '`'])
                .next()
                .unwrap_or_default()
                .to_owned();
            (flag, [cells[1].clone(), cells[2].clone(), cells[3].clone()])
        })
        .collect()
}

#[test]
fn the_documentation_names_every_option_its_environment_key_and_default() {
    let command = <Options as clap::Args>::augment_args(clap::Command::new("serve"));
    let documented = documented_options();
    let mut problems = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let Some((_, [env, key, default])) = documented.iter().find(|(flag, _)| flag == long)
        else {
            problems.push(format!("--{long} is not in the table"));
            continue;
        };
        let expected_env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        if Some(env) != expected_env.as_ref() {
            problems.push(format!(
                "--{long}: environment {env:?}, not {expected_env:?}"
            ));
        }
        if key != long {
            problems.push(format!("--{long}: file key {key:?}"));
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let default = default.replace('`', "");
        match shown(long) {
            Some(value) => {
                if default != value {
                    problems.push(format!("--{long}: default {default:?}, not {value:?}"));
                }
                if !help.ends_with(&format!("[default: {value}]"))
                    || help.matches("[default").count() != 1
                {
                    problems.push(format!("--{long}: the default in --help: {help}"));
                }
            }
            None => {
                if default != "none" && !default.starts_with("none (") {
                    problems.push(format!("--{long} has no default, not {default:?}"));
                }
                if help.contains("[default") {
                    problems.push(format!("--{long} has no default, but --help: {help}"));
                }
            }
        }
    }
    for (flag, [_, _, default]) in &documented {
        if flag == "config" && shown(flag).as_deref() != Some(&default.replace('`', "")) {
            problems.push(format!("--config: default {default:?}"));
        }
        if flag != "config" && command.get_arguments().all(|a| a.get_long() != Some(flag)) {
            problems.push(format!("--{flag} is documented, but no such option"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md, `tidings serve` options:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_defaults_shown_are_the_defaults_applied() {
    let config = Config::default();
    let applied = [
        ("listen", config.listen.to_string()),
        ("bus", config.bus_url.clone()),
        ("bus-prefix", config.bus.prefix.clone()),
        ("heartbeat", config.heartbeat.as_secs().to_string()),
        (
            "admin-page",
            serde_json::to_value(config.admin_page)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        (
            "cluster-heartbeat",
            config.cluster_heartbeat.as_secs().to_string(),
        ),
        (
            "cluster-deadline-ms",
            config.cluster_deadline.as_millis().to_string(),
        ),
        ("history-size", config.bus.history_size.to_string()),
        ("session-ttl", config.bus.session_ttl_secs.to_string()),
        (
            "bus-reconnect-max",
            config.bus.backoff.max.as_secs().to_string(),
        ),
        (
            "bus-replay-timeout",
            config.bus.timeouts.replay.as_secs().to_string(),
        ),
        ("jwt-leeway", config.auth.leeway_secs.to_string()),
        ("max-streams", config.streams.per_instance.to_string()),
        (
            "subscriber-queue-bytes",
            config.subscriber_queue.bytes.to_string(),
        ),
        (
            "selector-cache-size",
            config.selector_cache_size.to_string(),
        ),
        ("drain-secs", config.drain.as_secs().to_string()),
        ("log", config.log.clone()),
    ];
    for (option, value) in applied {
        assert_eq!(shown(option), Some(value), "--{option}");
    }
}

#[test]
fn every_bus_scheme_is_in_the_help_and_the_documentation() {
    let command = <Options as clap::Args>::augment_args(clap::Command::new("serve"));
    let help = command
        .get_arguments()
        .find(|a| a.get_long() == Some("bus"))
        .and_then(|a| a.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    let row = CONFIGURATION_MD
        .lines()
        .find(|l| l.starts_with("| `--bus URL`"))
        .expect("docs/configuration.md has a --bus row");
    for (scheme, _) in crate::bus::Kind::SCHEMES {
        let url = format!("{scheme}://");
        assert!(
            help.contains(&url),
            "--bus --help does not name {url}: {help}"
        );
        assert!(
            row.contains(&url),
            "docs/configuration.md's --bus row does not name {url}"
        );
    }
}

#[test]
fn debug_shows_no_secret() {
    // A `{:?}` of the settings in a log line must not print a key or a password (review L6).
    let toml = r#"
        bus = "redis://:bus-secret@127.0.0.1:6379"
        jwt-key = "jwt-secret-0123456789abcdef0123456789"
        subscriber-jwt-key = "sub-secret-0123456789abcdef012345678"
        jwks-url = "https://u:jwks-secret@idp.example/keys"
        jwt-audience = "hub"
        auth-url = "https://u:cb-secret@app.example/auth"
        webhook-url = "https://u:hook-pass@app.example/hooks"
        webhook-secret = "hook-secret"
        admin-key = "admin-secret-0123456789abcdef0123456789"

        [[issuer]]
        iss = "https://app.example"
        jwt-key = "issuer-secret-0123456789abcdef012345"
        jwt-audience = "app-hub"
        authorization-server = true

        [[issuer]]
        iss = "https://login.example"
        jwks-url = "https://u:issuer-jwks-secret@login.example/keys"
    "#;
    let options: Options = toml::from_str(toml).unwrap();
    let config = options.clone().resolve().unwrap();
    let shown = format!(
        "{options:?} {config:?} {:?} {:?}",
        config.auth, config.webhooks
    );
    for secret in [
        "bus-secret",
        "jwt-secret",
        "sub-secret",
        "jwks-secret",
        "cb-secret",
        "hook-pass",
        "hook-secret",
        "issuer-secret",
        "issuer-jwks-secret",
        "admin-secret",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("idp.example") && shown.contains("\"hub\""),
        "{shown}"
    );
    // The [[issuer]] tables, as the file gave them.
    let issuers = &config.auth.issuers;
    assert_eq!(issuers.len(), 2);
    assert_eq!(
        (
            issuers[0].audience.as_deref(),
            issuers[0].authorization_server
        ),
        (Some("app-hub"), true)
    );
    assert_eq!(
        config.auth.authorization_servers().collect::<Vec<_>>(),
        ["https://app.example"]
    );
    let typo = toml::from_str::<Options>("[[issuer]]\niss = \"x\"\njwt-keys = \"k\"")
        .err()
        .unwrap()
        .to_string();
    assert!(typo.contains("jwt-keys"), "{typo}");
}
