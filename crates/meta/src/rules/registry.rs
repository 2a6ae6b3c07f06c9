//! Broker liveness and node-id ownership: a broker is live while its last
//! heartbeat is within the TTL; a heartbeat may take a node id only if the
//! row is free, its own (same host and port), or held by a broker that is no
//! longer live.

use crate::{BrokerInfo, Endpoint, MetaError, Result};

/// A broker's listeners as one text column: `NAME://host:port` items
/// separated by commas (IPv6 hosts in brackets).
pub fn encode_listeners(listeners: &[Endpoint]) -> String {
    listeners
        .iter()
        .map(|e| format!("{}://{}:{}", e.name, e.host, e.port))
        .collect::<Vec<_>>()
        .join(",")
}

/// The listeners [`encode_listeners`] wrote (malformed items are skipped:
/// a registry row is written by brokers, never by clients).
pub fn decode_listeners(text: &str) -> Vec<Endpoint> {
    text.split(',')
        .filter_map(|item| {
            let (name, address) = item.trim().split_once("://")?;
            let (host, port) = address.rsplit_once(':')?;
            Some(Endpoint {
                name: name.to_owned(),
                host: host.to_owned(),
                port: port.parse().ok()?,
            })
        })
        .collect()
}

/// Oldest `last_seen_ms` that still counts as live: `now_ms - ttl_ms`,
/// saturating instead of overflowing on extreme arguments.
pub fn live_cutoff(now_ms: i64, ttl_ms: i64) -> i64 {
    now_ms.saturating_sub(ttl_ms)
}

/// Whether a heartbeat from `info` may take the node id's row, held by
/// `(host, port, last_seen_ms)` (`None` = free). `cutoff` is [`live_cutoff`].
pub fn may_claim(info: &BrokerInfo, held: Option<(&str, i32, i64)>, cutoff: i64) -> Result<()> {
    match held {
        Some((host, port, last_seen_ms))
            if (host != info.host || port != info.port) && last_seen_ms >= cutoff =>
        {
            Err(id_in_use(info.node_id, host, port))
        }
        _ => Ok(()),
    }
}

/// The error for a heartbeat whose node id a different live broker holds.
pub fn id_in_use(node_id: i32, host: &str, port: i32) -> MetaError {
    MetaError::InvalidArgument(format!(
        "broker id {node_id} is already used by live broker {host}:{port}"
    ))
}

/// The error when other brokers keep taking the node id between attempts.
pub fn id_contended(node_id: i32) -> MetaError {
    MetaError::InvalidArgument(format!("broker id {node_id} is contended by other brokers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_live_other_broker_holds_an_id() {
        let me = BrokerInfo {
            node_id: 1,
            host: "a".into(),
            port: 9092,
            ..BrokerInfo::default()
        };
        assert!(may_claim(&me, None, 100).is_ok());
        assert!(may_claim(&me, Some(("a", 9092, 500)), 100).is_ok());
        assert!(may_claim(&me, Some(("b", 9092, 99)), 100).is_ok());
        assert!(may_claim(&me, Some(("b", 9092, 100)), 100).is_err());
        assert!(may_claim(&me, Some(("a", 9093, 100)), 100).is_err());
        assert_eq!(live_cutoff(i64::MIN, 5), i64::MIN);
    }

    #[test]
    fn listeners_round_trip() {
        let listeners = vec![
            Endpoint {
                name: "PLAINTEXT".into(),
                host: "10.0.0.1".into(),
                port: 9092,
            },
            Endpoint {
                name: "SASL_SSL".into(),
                host: "[::1]".into(),
                port: 9094,
            },
        ];
        let text = encode_listeners(&listeners);
        assert_eq!(text, "PLAINTEXT://10.0.0.1:9092,SASL_SSL://[::1]:9094");
        assert_eq!(decode_listeners(&text), listeners);
        assert!(decode_listeners("").is_empty());
        assert!(decode_listeners("junk,SSL://h:x").is_empty());
    }
}
