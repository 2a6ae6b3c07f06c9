//! Topic configs: every key a topic may set, with its Kafka default and its
//! check, declared once in [`KEYS`]. The admin APIs validate and describe
//! through it; produce and maintenance read the typed [`TopicConfig`].
//! Stored configs stay text (`TopicMeta::configs`), as Kafka keeps them; a
//! stored value that no longer parses reads as the default.

use std::collections::BTreeMap;

use tributary_protocol::recompress::Codec;

/// Kafka's default `retention.ms` (7 days).
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// One topic config key.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    /// The broker config that sets the default for every topic (Kafka's
    /// `log.retention.ms` for `retention.ms`, …), if Kafka has one.
    pub broker_name: Option<&'static str>,
    default: DefaultValue,
    check: Check,
    /// What setting it does here.
    pub effect: Effect,
    /// One line, as DescribeConfigs documents it.
    pub doc: &'static str,
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
    /// A 32-bit integer in this range.
    Int(i64, i64),
    /// A 64-bit integer in this range.
    Long(i64, i64),
    /// A number between 0 and 1.
    Ratio,
    /// `true` or `false`.
    Bool,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A comma-separated list of these words, each at most once.
    ListOf(&'static [&'static str]),
    /// `*` or `partition:broker` pairs (the replication throttles).
    Replicas,
    /// A Kafka release such as `2.8` or `3.0-IV1`.
    Version,
}

/// What setting a key does on Tributary. Every key Kafka defines is
/// accepted, validated and reported; the README lists the effect of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Tributary applies it.
    Applied,
    /// Tributary applies part of it (the text says which).
    Partly(&'static str),
    /// The guarantee it asks for always holds here, whatever the value (the
    /// text says why).
    AlwaysHolds(&'static str),
    /// It tunes a part of Kafka that Tributary does not have (the text says
    /// which).
    NoCounterpart(&'static str),
    /// Removed in Kafka 4; accepted as Kafka 3.x did, for old clients and
    /// tools.
    Removed,
}

/// `Long.MAX_VALUE`, Kafka's "never" for millisecond and count configs.
const NEVER: i64 = i64::MAX;

const LOCAL_LOG: &str = "Kafka's local log files and their indexes; Tributary's log is objects";
const REPLICATION: &str = "Kafka's replication between brokers; the object store replicates";
const TIERED: &str = "Kafka's tiered storage; every byte here is already in the object store";
const DURABLE: &str = "a write is acknowledged only once it is in the object store and committed";

/// Every topic config key of Kafka 4 (and the three Kafka 3.x keys it
/// removed), sorted by name.
pub const KEYS: &[Key] = &[
    Key {
        name: "cleanup.policy",
        broker_name: Some("log.cleanup.policy"),
        default: DefaultValue::Text("delete"),
        check: Check::ListOf(&["compact", "delete"]),
        effect: Effect::Applied,
        doc: "delete: drop old data by retention; compact: keep the latest record per key",
    },
    Key {
        name: "compression.gzip.level",
        broker_name: Some("compression.gzip.level"),
        default: DefaultValue::Number(-1),
        check: Check::Int(-1, 9),
        effect: Effect::Applied,
        doc: "gzip level when the broker compresses (-1: the codec's default)",
    },
    Key {
        name: "compression.lz4.level",
        broker_name: Some("compression.lz4.level"),
        default: DefaultValue::Number(9),
        check: Check::Int(1, 17),
        effect: Effect::Applied,
        doc: "lz4 level when the broker compresses",
    },
    Key {
        name: "compression.type",
        broker_name: Some("compression.type"),
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
        effect: Effect::Applied,
        doc: "the codec of stored batches (producer: as the producer sent them)",
    },
    Key {
        name: "compression.zstd.level",
        broker_name: Some("compression.zstd.level"),
        default: DefaultValue::Number(3),
        check: Check::Int(-131_072, 22),
        effect: Effect::Applied,
        doc: "zstd level when the broker compresses",
    },
    Key {
        name: "delete.retention.ms",
        broker_name: Some("log.cleaner.delete.retention.ms"),
        default: DefaultValue::Number(DAY_MS),
        check: Check::Long(0, NEVER),
        effect: Effect::Applied,
        doc: "how long compaction keeps a tombstone",
    },
    Key {
        name: "file.delete.delay.ms",
        broker_name: Some("log.segment.delete.delay.ms"),
        default: DefaultValue::Number(60_000),
        check: Check::Long(0, NEVER),
        effect: Effect::NoCounterpart("the janitor deletes objects shared by many topics after --segment-grace-ms"),
        doc: "wait before deleting a file from the filesystem",
    },
    Key {
        name: "flush.messages",
        broker_name: Some("log.flush.interval.messages"),
        default: DefaultValue::Number(NEVER),
        check: Check::Long(1, NEVER),
        effect: Effect::AlwaysHolds(DURABLE),
        doc: "fsync the log after this many records",
    },
    Key {
        name: "flush.ms",
        broker_name: Some("log.flush.interval.ms"),
        default: DefaultValue::Number(NEVER),
        check: Check::Long(0, NEVER),
        effect: Effect::AlwaysHolds(DURABLE),
        doc: "fsync the log after this long",
    },
    Key {
        name: "follower.replication.throttled.replicas",
        broker_name: None,
        default: DefaultValue::Text(""),
        check: Check::Replicas,
        effect: Effect::NoCounterpart(REPLICATION),
        doc: "replicas whose follower-side replication is throttled",
    },
    Key {
        name: "index.interval.bytes",
        broker_name: Some("log.index.interval.bytes"),
        default: DefaultValue::Number(4096),
        check: Check::Int(0, i32::MAX as i64),
        effect: Effect::NoCounterpart(LOCAL_LOG),
        doc: "bytes between offset-index entries",
    },
    Key {
        name: "leader.replication.throttled.replicas",
        broker_name: None,
        default: DefaultValue::Text(""),
        check: Check::Replicas,
        effect: Effect::NoCounterpart(REPLICATION),
        doc: "replicas whose leader-side replication is throttled",
    },
    Key {
        name: "local.retention.bytes",
        broker_name: Some("log.local.retention.bytes"),
        default: DefaultValue::Number(-2),
        check: Check::Long(-2, NEVER),
        effect: Effect::NoCounterpart(TIERED),
        doc: "bytes kept on local disk when tiered storage is on (-2: retention.bytes)",
    },
    Key {
        name: "local.retention.ms",
        broker_name: Some("log.local.retention.ms"),
        default: DefaultValue::Number(-2),
        check: Check::Long(-2, NEVER),
        effect: Effect::NoCounterpart(TIERED),
        doc: "time kept on local disk when tiered storage is on (-2: retention.ms)",
    },
    Key {
        name: "max.compaction.lag.ms",
        broker_name: Some("log.cleaner.max.compaction.lag.ms"),
        default: DefaultValue::Number(NEVER),
        check: Check::Long(1, NEVER),
        effect: Effect::Applied,
        doc: "longest a record may stay uncompacted",
    },
    Key {
        name: "max.message.bytes",
        broker_name: Some("message.max.bytes"),
        default: DefaultValue::BrokerMaxMessageBytes,
        check: Check::Int(0, i32::MAX as i64),
        effect: Effect::Applied,
        doc: "the largest record batch accepted",
    },
    Key {
        name: "message.downconversion.enable",
        broker_name: Some("log.message.downconversion.enable"),
        default: DefaultValue::Text("true"),
        check: Check::Bool,
        effect: Effect::Removed,
        doc: "down-convert batches for old consumers (removed in Kafka 4)",
    },
    Key {
        name: "message.format.version",
        broker_name: Some("log.message.format.version"),
        default: DefaultValue::Text("3.0-IV1"),
        check: Check::Version,
        effect: Effect::Removed,
        doc: "the record format of the log (removed in Kafka 4; always v2 here)",
    },
    Key {
        name: "message.timestamp.after.max.ms",
        broker_name: Some("log.message.timestamp.after.max.ms"),
        default: DefaultValue::Number(3_600_000),
        check: Check::Long(0, NEVER),
        effect: Effect::Applied,
        doc: "how far ahead of the broker's clock a CreateTime timestamp may be",
    },
    Key {
        name: "message.timestamp.before.max.ms",
        broker_name: Some("log.message.timestamp.before.max.ms"),
        default: DefaultValue::Number(NEVER),
        check: Check::Long(0, NEVER),
        effect: Effect::Applied,
        doc: "how far behind the broker's clock a CreateTime timestamp may be",
    },
    Key {
        name: "message.timestamp.difference.max.ms",
        broker_name: Some("log.message.timestamp.difference.max.ms"),
        default: DefaultValue::Number(NEVER),
        check: Check::Long(0, NEVER),
        effect: Effect::Removed,
        doc: "how far a CreateTime timestamp may be from the broker's clock either way (removed in Kafka 4; applied as both bounds above)",
    },
    Key {
        name: "message.timestamp.type",
        broker_name: Some("log.message.timestamp.type"),
        default: DefaultValue::Text("CreateTime"),
        check: Check::OneOf(&["CreateTime", "LogAppendTime"]),
        effect: Effect::Applied,
        doc: "CreateTime: the producer's timestamps; LogAppendTime: the broker's",
    },
    Key {
        name: "min.cleanable.dirty.ratio",
        broker_name: Some("log.cleaner.min.cleanable.ratio"),
        default: DefaultValue::Text("0.5"),
        check: Check::Ratio,
        effect: Effect::Applied,
        doc: "the share of uncompacted bytes that makes a partition worth compacting",
    },
    Key {
        name: "min.compaction.lag.ms",
        broker_name: Some("log.cleaner.min.compaction.lag.ms"),
        default: DefaultValue::Number(0),
        check: Check::Long(0, NEVER),
        effect: Effect::Applied,
        doc: "shortest time a record stays uncompacted",
    },
    Key {
        name: "min.insync.replicas",
        broker_name: Some("min.insync.replicas"),
        default: DefaultValue::Number(1),
        check: Check::Int(1, i32::MAX as i64),
        effect: Effect::AlwaysHolds("acks=all waits for the object store, which keeps its own replicas"),
        doc: "replicas that must have a write before acks=all answers",
    },
    Key {
        name: "preallocate",
        broker_name: Some("log.preallocate"),
        default: DefaultValue::Text("false"),
        check: Check::Bool,
        effect: Effect::NoCounterpart(LOCAL_LOG),
        doc: "preallocate segment files",
    },
    Key {
        name: "remote.log.copy.disable",
        broker_name: None,
        default: DefaultValue::Text("false"),
        check: Check::Bool,
        effect: Effect::NoCounterpart(TIERED),
        doc: "stop copying segments to tiered storage",
    },
    Key {
        name: "remote.log.delete.on.disable",
        broker_name: None,
        default: DefaultValue::Text("false"),
        check: Check::Bool,
        effect: Effect::NoCounterpart(TIERED),
        doc: "delete tiered data when tiered storage is turned off",
    },
    Key {
        name: "remote.storage.enable",
        broker_name: None,
        default: DefaultValue::Text("false"),
        check: Check::Bool,
        effect: Effect::AlwaysHolds("every topic's data is in the object store"),
        doc: "keep the topic's data in tiered (remote) storage",
    },
    Key {
        name: "retention.bytes",
        broker_name: Some("log.retention.bytes"),
        default: DefaultValue::Number(-1),
        check: Check::Long(-1, NEVER),
        effect: Effect::Applied,
        doc: "bytes kept per partition before old data is dropped (-1: no limit)",
    },
    Key {
        name: "retention.ms",
        broker_name: Some("log.retention.ms"),
        default: DefaultValue::Number(DEFAULT_RETENTION_MS),
        check: Check::Long(-1, NEVER),
        effect: Effect::Applied,
        doc: "how long data is kept (-1: forever)",
    },
    Key {
        name: "segment.bytes",
        broker_name: Some("log.segment.bytes"),
        default: DefaultValue::Number(1 << 30),
        check: Check::Int(14, i32::MAX as i64),
        effect: Effect::NoCounterpart("segments are objects shared by all partitions, sized by --max-segment-bytes"),
        doc: "size of one log segment file",
    },
    Key {
        name: "segment.index.bytes",
        broker_name: Some("log.index.size.max.bytes"),
        default: DefaultValue::Number(10 << 20),
        check: Check::Int(4, i32::MAX as i64),
        effect: Effect::NoCounterpart(LOCAL_LOG),
        doc: "size of a segment's offset index",
    },
    Key {
        name: "segment.jitter.ms",
        broker_name: Some("log.roll.jitter.ms"),
        default: DefaultValue::Number(0),
        check: Check::Long(0, NEVER),
        effect: Effect::NoCounterpart(LOCAL_LOG),
        doc: "random jitter subtracted from segment.ms",
    },
    Key {
        name: "segment.ms",
        broker_name: Some("log.roll.ms"),
        default: DefaultValue::Number(7 * DAY_MS),
        check: Check::Long(1, NEVER),
        effect: Effect::NoCounterpart("segments are objects shared by all partitions, sealed by --flush-interval-ms"),
        doc: "time after which a log segment file is rolled",
    },
    Key {
        name: "tributary.flush.max.ms",
        broker_name: None,
        default: DefaultValue::Number(-1),
        check: Check::Long(-1, 3_600_000),
        effect: Effect::Applied,
        doc: "Tributary's own: the longest a produced batch waits before its segment is sealed (-1: the broker's --flush-interval-ms; lower is faster and costs more PUTs)",
    },
    Key {
        name: "unclean.leader.election.enable",
        broker_name: Some("unclean.leader.election.enable"),
        default: DefaultValue::Text("false"),
        check: Check::Bool,
        effect: Effect::AlwaysHolds("any broker serves every partition from the object store; no replica can be behind"),
        doc: "let an out-of-sync replica become leader",
    },
];

fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// DescribeConfigs' config types (v3+).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

impl Key {
    /// The default as text, given the broker's `max_message_bytes`.
    pub fn default_value(&self, broker_max_message_bytes: i64) -> String {
        match self.default {
            DefaultValue::Number(n) => n.to_string(),
            DefaultValue::Text(t) => t.to_owned(),
            DefaultValue::BrokerMaxMessageBytes => broker_max_message_bytes.to_string(),
        }
    }

    /// Its type, as DescribeConfigs v3+ reports it.
    pub fn config_type(&self) -> i8 {
        match self.check {
            Check::Int(..) => TYPE_INT,
            Check::Long(..) => TYPE_LONG,
            Check::Ratio => TYPE_DOUBLE,
            Check::Bool => TYPE_BOOLEAN,
            Check::OneOf(_) | Check::Version => TYPE_STRING,
            Check::ListOf(_) | Check::Replicas => TYPE_LIST,
        }
    }

    fn check(&self, value: &str) -> Result<(), String> {
        let name = self.name;
        let ok = match self.check {
            Check::Int(min, max) | Check::Long(min, max) => {
                return match value.trim().parse::<i64>() {
                    Ok(v) if (min..=max).contains(&v) => Ok(()),
                    _ if max == NEVER || max == i32::MAX as i64 => {
                        Err(format!("{name} must be an integer >= {min}, got {value:?}"))
                    }
                    _ => Err(format!(
                        "{name} must be an integer between {min} and {max}, got {value:?}"
                    )),
                };
            }
            Check::Ratio => value
                .trim()
                .parse::<f64>()
                .is_ok_and(|r| (0.0..=1.0).contains(&r)),
            Check::Bool => {
                value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
            }
            Check::OneOf(words) => {
                if words.contains(&value) {
                    return Ok(());
                }
                return Err(format!(
                    "{name} must be one of {}, got {value:?}",
                    words.join(" | ")
                ));
            }
            Check::ListOf(words) => {
                let items: Vec<&str> = value.split(',').map(str::trim).collect();
                let known = items.iter().all(|i| words.contains(i));
                let once = items
                    .iter()
                    .enumerate()
                    .all(|(n, i)| !items[..n].contains(i));
                if known && once {
                    return Ok(());
                }
                return Err(format!(
                    "{name} must be a comma-separated list of {}, each at most once, got {value:?}",
                    words.join(", ")
                ));
            }
            Check::Replicas => {
                let value = value.trim();
                value.is_empty()
                    || value == "*"
                    || value.split(',').all(|pair| {
                        pair.trim().split_once(':').is_some_and(|(p, b)| {
                            p.trim().parse::<u32>().is_ok() && b.trim().parse::<u32>().is_ok()
                        })
                    })
            }
            Check::Version => {
                let (release, iv) = match value.split_once("-IV") {
                    Some((r, iv)) => (r, Some(iv)),
                    None => (value, None),
                };
                let parts: Vec<&str> = release.split('.').collect();
                (2..=3).contains(&parts.len())
                    && parts
                        .iter()
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    && iv.is_none_or(|iv| iv.parse::<u8>().is_ok())
            }
        };
        if ok {
            return Ok(());
        }
        let what = match self.check {
            Check::Ratio => "a number between 0 and 1",
            Check::Bool => "true or false",
            Check::Replicas => "* or a comma-separated list of partition:broker pairs",
            _ => "a Kafka release such as 2.8 or 3.0-IV1",
        };
        Err(format!("{name} must be {what}, got {value:?}"))
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

/// The key named `name`, if a topic may set it.
pub fn find(name: &str) -> Option<&'static Key> {
    key(name)
}

/// The key whose broker-wide default is `broker_name`.
pub fn find_by_broker_name(broker_name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.broker_name == Some(broker_name))
}

/// Whether `name` is a topic config key.
pub fn is_known(name: &str) -> bool {
    key(name).is_some()
}

/// Every key's broker-level name with its default, as DescribeConfigs
/// reports a broker's configs.
pub fn broker_defaults(broker_max_message_bytes: i64) -> BTreeMap<&'static str, String> {
    KEYS.iter()
        .filter_map(|k| Some((k.broker_name?, k.default_value(broker_max_message_bytes))))
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
#[derive(Debug, Clone, PartialEq)]
pub struct TopicConfig {
    /// `retention.ms`; -1 keeps everything.
    pub retention_ms: i64,
    /// `retention.bytes` per partition; -1 is unlimited.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest record batch accepted.
    pub max_message_bytes: i64,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `compression.type` with its level: the codec stored batches are
    /// recompressed to; `None` keeps the producer's (`producer`).
    pub compression: Option<Codec>,
    /// `cleanup.policy` includes `compact`: every record needs a key.
    pub compact: bool,
    /// `cleanup.policy` includes `delete`: retention drops old data (a
    /// `compact`-only topic keeps every key's latest record forever).
    pub delete: bool,
    /// `delete.retention.ms`: how long key compaction keeps a tombstone.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this stay as written.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: data older than this is compacted whatever
    /// the dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`: the share of not-yet-compacted bytes
    /// that makes a partition worth compacting.
    pub min_cleanable_dirty_ratio: f64,
    /// How far behind the broker's clock a CreateTime timestamp may be
    /// (`message.timestamp.before.max.ms`, or the removed
    /// `message.timestamp.difference.max.ms` when that is smaller).
    pub timestamp_before_max_ms: i64,
    /// How far ahead of the broker's clock a CreateTime timestamp may be
    /// (`message.timestamp.after.max.ms`, or the difference when smaller).
    pub timestamp_after_max_ms: i64,
    /// `tributary.flush.max.ms`: the longest a produced batch waits for its
    /// segment to be sealed; `None`: the broker's flush interval.
    pub flush_max_ms: Option<u64>,
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
                (Some(v), _) => v.trim().parse().unwrap_or(-1),
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
        let difference = number("message.timestamp.difference.max.ms");
        let level = |name: &str| i32::try_from(number(name)).unwrap_or(-1);
        Self {
            compression: match word("compression.type") {
                "uncompressed" | "none" => Some(Codec::None),
                "gzip" => Some(Codec::Gzip(level("compression.gzip.level"))),
                "snappy" => Some(Codec::Snappy),
                "lz4" => Some(Codec::Lz4(level("compression.lz4.level"))),
                "zstd" => Some(Codec::Zstd(level("compression.zstd.level"))),
                _ => None,
            },
            compact: word("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "compact"),
            delete: word("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "delete"),
            timestamp_before_max_ms: number("message.timestamp.before.max.ms").min(difference),
            timestamp_after_max_ms: number("message.timestamp.after.max.ms").min(difference),
            delete_retention_ms: number("delete.retention.ms"),
            min_compaction_lag_ms: number("min.compaction.lag.ms"),
            max_compaction_lag_ms: number("max.compaction.lag.ms"),
            min_cleanable_dirty_ratio: word("min.cleanable.dirty.ratio")
                .trim()
                .parse()
                .unwrap_or(0.5),
            flush_max_ms: u64::try_from(number("tributary.flush.max.ms")).ok(),
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

    /// The README's topic config table is what users read: a row for every
    /// key, marked applied exactly when it is.
    #[test]
    fn readme_lists_every_key_with_its_effect() {
        let readme = include_str!("../../../README.md");
        for k in KEYS {
            let start = format!("| `{}` |", k.name);
            let row = readme
                .lines()
                .find(|l| l.starts_with(&start))
                .unwrap_or_else(|| panic!("README topic config table has no row for {}", k.name));
            let (word, why) = match k.effect {
                Effect::Applied => ("**applied**", None),
                Effect::Partly(why) => ("applied in part", Some(why)),
                Effect::AlwaysHolds(why) => ("always holds", Some(why)),
                Effect::NoCounterpart(why) => ("no counterpart", Some(why)),
                Effect::Removed => ("removed in Kafka 4", None),
            };
            assert!(
                row.contains(word),
                "README row of {} should say {word}: {row}",
                k.name
            );
            if let Some(why) = why {
                assert!(
                    row.contains(why),
                    "README row of {} should say why ({why}): {row}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn validates_like_kafka() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("cleanup.policy", "delete, compact").is_ok());
        assert!(validate("cleanup.policy", "compact,compact").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "0.1").is_ok());
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate("preallocate", "TRUE").is_ok());
        assert!(validate("preallocate", "yes").is_err());
        assert!(validate("compression.zstd.level", "23").is_err());
        assert!(validate("compression.zstd.level", "-5").is_ok());
        assert!(validate("message.format.version", "2.8").is_ok());
        assert!(validate("message.format.version", "3.0-IV1").is_ok());
        assert!(validate("message.format.version", "latest").is_err());
        assert!(validate("leader.replication.throttled.replicas", "*").is_ok());
        assert!(validate("leader.replication.throttled.replicas", "0:1, 1:2").is_ok());
        assert!(validate("leader.replication.throttled.replicas", "0-1").is_err());
        assert!(validate("segment.bytes", "4294967296").is_err(), "an INT");
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
        assert!(!t.compact && t.delete);
        assert_eq!(d.compression, None, "the producer's codec by default");
        assert_eq!(t.timestamp_after_max_ms, 3_600_000, "Kafka 4's default");
        assert_eq!(t.timestamp_before_max_ms, i64::MAX);
        let set: BTreeMap<String, String> = [
            ("cleanup.policy", "delete, compact"),
            ("message.timestamp.difference.max.ms", "60000"),
            ("compression.type", "zstd"),
            ("compression.zstd.level", "9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let t = TopicConfig::resolve(&set, 1000);
        assert!(t.compact && t.delete);
        assert_eq!(t.timestamp_after_max_ms, 60_000);
        assert_eq!(t.timestamp_before_max_ms, 60_000);
        assert_eq!(t.compression, Some(Codec::Zstd(9)));
    }
}
