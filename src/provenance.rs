//! Where each configuration value comes from, for `tango config check`: the effective
//! configuration as `section.key = value` lines, secrets masked, each with its source
//! (default, file, environment variable or flag), following the precedence that
//! [`crate::config`] applies: defaults, the file, the environment, the flags.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::Config;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    /// The configuration file (its path).
    File(String),
    /// An environment variable (its name).
    Environment(String),
    /// A command-line flag (its name, `--port`).
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(path) => write!(f, "file {path}"),
            Source::Environment(name) => write!(f, "environment {name}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// One value of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `section.key`.
    pub key: String,
    /// The value as TOML, or `"********"` for a secret that is set.
    pub value: String,
    pub source: Source,
}

/// What was given besides the defaults: the file (its path and text), the environment, and
/// the dotted keys set by flags with the flag's name.
pub struct Given<'a> {
    pub file: Option<(&'a str, &'a str)>,
    pub env: &'a BTreeMap<String, String>,
    pub flags: &'a [(&'static str, &'static str)],
}

/// Tango's deployment variables and the key each sets (see [`crate::config`]).
const DEPLOYMENT_VARIABLES: [(&str, &str); 4] = [
    ("RESTFUL_KEY", "server.keys"),
    ("DOCKER_DEPLOYMENT", "vmms.prefix"),
    ("DOCKER_REDIS_HOSTNAME", "store.redis_host"),
    ("DOCKER_VOLUME_PATH", "docker.volume_path"),
];

/// Keys whose values are never printed.
fn is_secret(key: &str) -> bool {
    let name = key.rsplit('.').next().unwrap_or(key);
    name == "keys"
        || ["password", "secret", "token", "access_key"]
            .iter()
            .any(|s| name.contains(s))
}

/// Every value of `config`, section by section, with its source.
pub fn report(config: &Config, given: &Given<'_>) -> Vec<Entry> {
    let effective = toml::Table::try_from(config).unwrap_or_default();
    let file: toml::Table = given
        .file
        .and_then(|(_, text)| text.parse().ok())
        .unwrap_or_default();
    let mut entries = Vec::new();
    for (section, values) in &effective {
        let Some(values) = values.as_table() else {
            continue;
        };
        for (name, value) in values {
            let key = format!("{section}.{name}");
            let in_file = file
                .get(section)
                .and_then(|s| s.as_table())
                .is_some_and(|s| s.contains_key(name));
            let source = source_of(&key, in_file, given);
            let empty = matches!(value, toml::Value::String(s) if s.is_empty())
                || matches!(value, toml::Value::Array(a) if a.is_empty());
            let value = if is_secret(&key) && !empty {
                "\"********\"".to_string()
            } else {
                value.to_string()
            };
            entries.push(Entry { key, value, source });
        }
    }
    entries
}

/// The source of `key`: the last of default, file, environment, flag that set it.
fn source_of(key: &str, in_file: bool, given: &Given<'_>) -> Source {
    if let Some((_, flag)) = given.flags.iter().find(|(k, _)| *k == key) {
        return Source::Flag((*flag).to_string());
    }
    let variable = format!("TANGO_{}", key.replacen('.', "_", 1)).to_uppercase();
    if let Some(name) = given
        .env
        .keys()
        .find(|name| name.to_uppercase() == variable)
    {
        return Source::Environment(name.clone());
    }
    if let Some((name, _)) = DEPLOYMENT_VARIABLES
        .iter()
        .find(|(name, k)| *k == key && given.env.contains_key(*name))
    {
        return Source::Environment((*name).to_string());
    }
    match given.file {
        Some((path, _)) if in_file => Source::File(path.to_string()),
        _ => Source::Default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_names_its_source_and_secrets_are_masked() {
        let text = "[server]\nport = 3001\nkeys = [\"s3cret\"]\n[store]\nredis_password = \"pw\"\n";
        let env: BTreeMap<String, String> = [
            ("TANGO_LOG_LEVEL".to_string(), "info".to_string()),
            ("DOCKER_REDIS_HOSTNAME".to_string(), "redis".to_string()),
        ]
        .into();
        let mut config = Config::parse(text, "t.toml").expect("parse");
        config.log.level = "info".into();
        config.store.redis_host = "redis".into();
        config.vmms.name = "local".into();
        let given = Given {
            file: Some(("t.toml", text)),
            env: &env,
            flags: &[("vmms.name", "--vmms")],
        };
        let entries = report(&config, &given);
        let find = |key: &str| {
            entries
                .iter()
                .find(|e| e.key == key)
                .unwrap_or_else(|| panic!("no {key}"))
                .clone()
        };
        assert_eq!(find("server.port").source, Source::File("t.toml".into()));
        assert_eq!(find("server.port").value, "3001");
        assert_eq!(find("server.bind").source, Source::Default);
        assert_eq!(
            find("log.level").source,
            Source::Environment("TANGO_LOG_LEVEL".into())
        );
        assert_eq!(
            find("store.redis_host").source,
            Source::Environment("DOCKER_REDIS_HOSTNAME".into())
        );
        assert_eq!(find("vmms.name").source, Source::Flag("--vmms".into()));
        assert_eq!(find("server.keys").value, "\"********\"");
        assert_eq!(find("store.redis_password").value, "\"********\"");
        let all = format!("{entries:?}");
        assert!(!all.contains("s3cret") && !all.contains("\"pw\""), "{all}");
    }
}
