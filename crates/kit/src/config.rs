//! Layered configuration: built-in defaults, then a TOML file, then `MLMESH_*` environment
//! variables, then command-line overrides (highest).
//!
//! Every source is passed in through [`Sources`], so tests hand in a map and never touch the
//! process environment. Environment keys use `__` between levels:
//! `MLMESH_REGISTRY__TTL_MS=5000` sets `registry.ttl_ms`.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;

const ENV_PREFIX: &str = "MLMESH";
const ENV_SEPARATOR: &str = "__";

/// Where configuration comes from. Build it with [`Sources::from_process`] in a binary and with
/// [`Sources::default`] plus [`Sources::set`] in tests.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Optional TOML file; a missing file named explicitly is an error.
    pub file: Option<PathBuf>,
    /// Environment variables (only `MLMESH_*` ones are read).
    pub env: HashMap<String, String>,
    /// `key.path = value` overrides from flags; they win over everything else.
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// The process's own environment, plus an optional file.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self {
            file,
            env,
            overrides: Vec::new(),
        }
    }

    /// Adds an override, e.g. `set("server.log_format", "text")`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.push((key.into(), value.into()));
        self
    }

    /// Reads section `section` into `T`. A missing section gives `T::default()`; unknown keys and
    /// values of the wrong type are errors that name the key.
    pub fn load<T: DeserializeOwned + Default>(&self, section: &str) -> Result<T, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = &self.file {
            if !file.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from(file.as_path()));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .source(Some(
                    self.env
                        .iter()
                        .filter(|(name, _)| is_setting(name))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )),
        );
        for (key, value) in &self.overrides {
            builder = builder
                .set_override(key.as_str(), value.as_str())
                .map_err(|e| ConfigError(format!("override `{key}`: {e}")))?;
        }
        let all = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        match all.get::<config::Value>(section) {
            Err(config::ConfigError::NotFound(_)) => Ok(T::default()),
            Err(e) => Err(ConfigError(e.to_string())),
            Ok(value) => value
                .try_deserialize::<T>()
                .map_err(|e| ConfigError(qualify(section, &e.to_string()))),
        }
    }
}

/// Whether an environment variable is a setting (`MLMESH_<SECTION>__<KEY>`). Variables with no
/// section separator belong to command-line flags (`MLMESH_REGISTRY`, `MLMESH_GATEWAY`,
/// `MLMESH_API_KEY`…); read as settings they would replace a whole section with a string.
fn is_setting(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
}

/// Prefixes bare key names in deserialisation messages with their section, so the message names
/// the full key a user would write (`registry.ttl_ms`, not `ttl_ms`).
fn qualify(section: &str, message: &str) -> String {
    if let Some(start) = message.find("for key `") {
        let key_start = start + "for key `".len();
        let (head, tail) = message.split_at(key_start);
        if !tail.starts_with(&format!("{section}.")) {
            return format!("{head}{section}.{tail}");
        }
        return message.to_string();
    }
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        return format!("unknown key `{section}.{field}`: {message}");
    }
    format!("in section `{section}`: {message}")
}

/// A configuration error; its message names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Settings every service shares, section `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest request body accepted by JSON endpoints (default 1 MiB). Streaming uploads set
    /// their own limit.
    pub body_limit_bytes: usize,
    /// `json` (default: one object a line, for machines) or `text` (for terminals).
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `mlmesh_registry=debug,info` (default `info`).
    pub log_level: String,
    /// Registry to register with and discover from; none means stand-alone.
    pub registry_url: Option<String>,
    /// URL other services use to reach this one; default `http://<bound address>`.
    pub advertise_url: Option<String>,
    /// Instance id in the registry; default `<service>-<random>`.
    pub instance_id: Option<String>,
    /// Where this service keeps its state (shared by its replicas); none for stateless ones.
    pub data_dir: Option<PathBuf>,
}

impl ServerConfig {
    /// The data directory a stateful service needs, or an error naming how to set it.
    pub fn require_data_dir(&self, service: &str) -> std::io::Result<PathBuf> {
        self.data_dir.clone().ok_or_else(|| {
            std::io::Error::other(format!(
                "the {service} service needs a data directory: --data-dir or server.data_dir"
            ))
        })
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1 << 20,
            log_format: LogFormat::Json,
            log_level: "info".to_string(),
            registry_url: None,
            advertise_url: None,
            instance_id: None,
            data_dir: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        ttl_ms: u64,
        name: String,
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn missing_section_gives_defaults() {
        let demo: Demo = Sources::default().load("demo").unwrap();
        assert_eq!(demo, Demo::default());
        let server: ServerConfig = Sources::default().load("server").unwrap();
        assert_eq!(server.body_limit_bytes, 1 << 20);
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mlmesh.toml");
        std::fs::write(&file, "[demo]\nttl_ms = 1\nname = \"file\"\n").unwrap();
        let sources = Sources {
            file: Some(file),
            env: env(&[("MLMESH_DEMO__TTL_MS", "2"), ("OTHER_DEMO__NAME", "x")]),
            overrides: vec![],
        };
        let demo: Demo = sources.load("demo").unwrap();
        assert_eq!(
            demo,
            Demo {
                ttl_ms: 2,
                name: "file".into()
            }
        );
        let demo: Demo = sources.set("demo.name", "flag").load("demo").unwrap();
        assert_eq!(demo.name, "flag");
    }

    #[test]
    fn flag_variables_are_not_settings() {
        // `MLMESH_REGISTRY` is `serve --registry`'s variable, `MLMESH_GATEWAY` the CLI's; they
        // must not be read as the `[registry]` or `[gateway]` section.
        let sources = Sources {
            env: env(&[
                ("MLMESH_DEMO", "http://127.0.0.1:9"),
                ("MLMESH_DEMO__NAME", "env"),
            ]),
            ..Sources::default()
        };
        let demo: Demo = sources.load("demo").unwrap();
        assert_eq!(demo.name, "env");
    }

    #[test]
    fn errors_name_the_key() {
        let sources = Sources {
            env: env(&[("MLMESH_DEMO__TTL_MS", "soon")]),
            ..Sources::default()
        };
        let err = sources.load::<Demo>("demo").unwrap_err().to_string();
        assert!(err.contains("demo.ttl_ms"), "{err}");

        let sources = Sources::default().set("demo.tll_ms", "5");
        let err = sources.load::<Demo>("demo").unwrap_err().to_string();
        assert!(err.contains("demo.tll_ms"), "{err}");
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let sources = Sources {
            file: Some("/nonexistent/mlmesh.toml".into()),
            ..Sources::default()
        };
        assert!(sources.load::<Demo>("demo").is_err());
    }
}
