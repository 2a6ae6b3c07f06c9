//! Topic configs: every key a topic may set, with its Kafka default and its
//! check, declared once in [`KEYS`]. The admin APIs validate and describe
//! through it; produce and maintenance read the typed [`TopicConfig`].
//! Stored configs stay text (`TopicMeta::configs`), as Kafka keeps them; a
//! stored value that no longer parses reads as the default.

use std::collections::BTreeMap;

/// Kafka's default `retention.ms` (7 days).
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Kafka's default `segment.ms` (7 days). Segments here are shared objects,
/// so it is accepted and reported, not applied.
const DEFAULT_SEGMENT_MS: i64 = 7 * 24 * 3600 * 1000;

/// One topic config key.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    /// The broker config that sets the default for every topic (Kafka's
    /// `log.retention.ms` for `retention.ms`, …).
    pub broker_name: &'static str,
    default: DefaultValue,
    check: Check,
}

#[derive(Debug, Clone, Copy)]
enum DefaultValue {
    Number(i64),
    Text(&'static str),
    /// The broker's `max_message_bytes` (Kafka's `message.max.bytes`).
    BrokerMaxMessageBytes,
}

#[derive(Debug, Clone, Copy)]
enum Check {
    /// An integer at least this.
    AtLeast(i64),
    /// One of these words.
    OneOf(&'static [&'static str]),
}

/// Every topic config key Tributary accepts, sorted by name.
pub const KEYS: &[Key] = &[
    Key {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        default: DefaultValue::Text("delete"),
        check: Check::OneOf(&["delete", "compact", "compact,delete", "delete,compact"]),
    },
    Key {
        name: "compression.type",
        broker_name: "compression.type",
        default: DefaultValue::Text("producer"),
        check: Check::OneOf(&[
            "producer",
            "uncompressed",
            "none",
            "gzip",
            "snappy",
            "lz4",
            "zstd",
        ]),
    },
    Key {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        default: DefaultValue::BrokerMaxMessageBytes,
        check: Check::AtLeast(0),
    },
    Key {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        default: DefaultValue::Text("CreateTime"),
        check: Check::OneOf(&["CreateTime", "LogAppendTime"]),
    },
    Key {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        default: DefaultValue::Number(1),
        check: Check::AtLeast(1),
    },
    Key {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        default: DefaultValue::Number(-1),
        check: Check::AtLeast(-1),
    },
    Key {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        default: DefaultValue::Number(DEFAULT_RETENTION_MS),
        check: Check::AtLeast(-1),
    },
    Key {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        default: DefaultValue::Number(1 << 30),
        check: Check::AtLeast(1),
    },
    Key {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        default: DefaultValue::Number(DEFAULT_SEGMENT_MS),
        check: Check::AtLeast(1),
    },
];

fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

impl Key {
    /// The default as text, given the broker's `max_message_bytes`.
    pub fn default_value(&self, broker_max_message_bytes: i64) -> String {
        match self.default {
            DefaultValue::Number(n) => n.to_string(),
            DefaultValue::Text(t) => t.to_owned(),
            DefaultValue::BrokerMaxMessageBytes => broker_max_message_bytes.to_string(),
        }
    }

    fn check(&self, value: &str) -> Result<(), String> {
        let name = self.name;
        match self.check {
            Check::AtLeast(min) => match value.parse::<i64>() {
                Ok(v) if v >= min => Ok(()),
                _ => Err(format!("{name} must be an integer >= {min}, got {value:?}")),
            },
            Check::OneOf(words) if words.contains(&value) => Ok(()),
            Check::OneOf(words) => Err(format!(
                "{name} must be one of {}, got {value:?}",
                words.join(" | ")
            )),
        }
    }
}

/// Check one key and value; `Err` names the problem (unknown key or bad
/// value).
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    match key(name) {
        Some(k) => k.check(value),
        None => Err(format!("unknown topic config {name}")),
    }
}

/// Whether `name` is a topic config key.
pub fn is_known(name: &str) -> bool {
    key(name).is_some()
}

/// Every key's broker-level name with its default, as DescribeConfigs
/// reports a broker's configs.
pub fn broker_defaults(broker_max_message_bytes: i64) -> BTreeMap<&'static str, String> {
    KEYS.iter()
        .map(|k| (k.broker_name, k.default_value(broker_max_message_bytes)))
        .collect()
}

/// Every key with its default, as DescribeConfigs reports them.
pub fn defaults(broker_max_message_bytes: i64) -> BTreeMap<&'static str, String> {
    KEYS.iter()
        .map(|k| (k.name, k.default_value(broker_max_message_bytes)))
        .collect()
}

/// How a topic stamps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The configs produce and maintenance act on, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`; -1 keeps everything.
    pub retention_ms: i64,
    /// `retention.bytes` per partition; -1 is unlimited.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest record batch accepted.
    pub max_message_bytes: i64,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
}

impl TopicConfig {
    /// The typed configs of a topic whose explicit configs are `explicit`.
    pub fn resolve(explicit: &BTreeMap<String, String>, broker_max_message_bytes: i64) -> Self {
        // Called for every produced partition: no allocation.
        let set = |k: &Key| {
            explicit
                .get(k.name)
                .map(String::as_str)
                .filter(|v| k.check(v).is_ok())
        };
        let number = |name: &str| {
            let k = key(name).expect("a key of KEYS");
            match (set(k), k.default) {
                (Some(v), _) => v.parse().unwrap_or(-1),
                (None, DefaultValue::Number(n)) => n,
                (None, DefaultValue::BrokerMaxMessageBytes) => broker_max_message_bytes,
                (None, DefaultValue::Text(t)) => t.parse().unwrap_or(-1),
            }
        };
        let word = |name: &str| {
            let k = key(name).expect("a key of KEYS");
            match (set(k), k.default) {
                (Some(v), _) => v,
                (None, DefaultValue::Text(t)) => t,
                (None, _) => "",
            }
        };
        Self {
            retention_ms: number("retention.ms"),
            retention_bytes: number("retention.bytes"),
            max_message_bytes: number("max.message.bytes"),
            timestamp_type: match word("message.timestamp.type") {
                "LogAppendTime" => TimestampType::LogAppendTime,
                _ => TimestampType::CreateTime,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_and_defaults_pass_their_own_check() {
        for pair in KEYS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
        for k in KEYS {
            assert_eq!(k.check(&k.default_value(1_048_588)), Ok(()), "{}", k.name);
        }
    }

    #[test]
    fn validates_like_kafka() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "forever").is_err());
        assert_eq!(
            validate("no.such", "1"),
            Err("unknown topic config no.such".to_owned())
        );
    }

    #[test]
    fn resolves_explicit_values_and_defaults() {
        let none = BTreeMap::new();
        let d = TopicConfig::resolve(&none, 1000);
        assert_eq!(d.retention_ms, DEFAULT_RETENTION_MS);
        assert_eq!(d.retention_bytes, -1);
        assert_eq!(d.max_message_bytes, 1000);
        assert_eq!(d.timestamp_type, TimestampType::CreateTime);
        let set: BTreeMap<String, String> = [
            ("retention.ms", "5"),
            ("max.message.bytes", "oops"),
            ("message.timestamp.type", "LogAppendTime"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let t = TopicConfig::resolve(&set, 1000);
        assert_eq!(t.retention_ms, 5);
        assert_eq!(
            t.max_message_bytes, 1000,
            "an unparsable stored value reads as the default"
        );
        assert_eq!(t.timestamp_type, TimestampType::LogAppendTime);
    }
}
