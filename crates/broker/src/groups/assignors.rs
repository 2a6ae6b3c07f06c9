//! The server-side assignors of KIP-848 consumer groups: `uniform` (the
//! default) and `range`.
//!
//! Both are pure functions of the members' subscriptions, the subscribed
//! topics' partition counts and the previous target assignment, so every
//! coordinator computes the same answer from the same inputs.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

/// Partitions by topic id.
pub(super) type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The assignors a member may name in `server_assignor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Assignor {
    /// Balanced and sticky: every member gets within one partition of the
    /// others subscribed to the same topics, and keeps what it had where
    /// balance allows.
    Uniform,
    /// Per topic, consecutive ranges of partitions to the members
    /// subscribed to it in member-id order: members subscribed to topics
    /// with equal partition counts get the same partition numbers of each
    /// (co-partitioning), as the classic `RangeAssignor` does.
    Range,
}

impl Assignor {
    pub(super) fn from_name(name: &str) -> Option<Assignor> {
        match name {
            "uniform" => Some(Assignor::Uniform),
            "range" => Some(Assignor::Range),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    /// The target assignment of every member in `subscriptions` (member id
    /// → topic ids it subscribes to that exist), given each topic's
    /// partition count and the previous target.
    pub(super) fn assign(
        self,
        subscriptions: &BTreeMap<String, BTreeSet<Uuid>>,
        partitions: &BTreeMap<Uuid, i32>,
        previous: &BTreeMap<String, Assignment>,
    ) -> BTreeMap<String, Assignment> {
        match self {
            Assignor::Uniform => uniform(subscriptions, partitions, previous),
            Assignor::Range => range(subscriptions, partitions),
        }
    }
}

fn count(a: &Assignment) -> usize {
    a.values().map(BTreeSet::len).sum()
}

fn range(
    subscriptions: &BTreeMap<String, BTreeSet<Uuid>>,
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    for (topic, &n) in partitions {
        // Members in id order (the map is ordered).
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() || n <= 0 {
            continue;
        }
        let n = usize::try_from(n).unwrap_or(0);
        let (per, extra) = (n / members.len(), n % members.len());
        let mut next = 0usize;
        for (i, m) in members.iter().enumerate() {
            let take = per + usize::from(i < extra);
            let set: BTreeSet<i32> = (next..next + take)
                .filter_map(|p| i32::try_from(p).ok())
                .collect();
            next += take;
            if !set.is_empty() {
                out.entry((*m).clone()).or_default().insert(*topic, set);
            }
        }
    }
    out
}

fn uniform(
    subscriptions: &BTreeMap<String, BTreeSet<Uuid>>,
    partitions: &BTreeMap<Uuid, i32>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
    // 1. Stickiness: what a member had stays with it while it still
    //    subscribes to the topic and the partition exists; at most the
    //    fair share of everything it subscribes to, so a member that held
    //    everything gives way to newcomers at once.
    let members = subscriptions.len().max(1);
    for (member, topics) in subscriptions {
        let eligible: usize = topics
            .iter()
            .filter_map(|t| partitions.get(t))
            .map(|&n| usize::try_from(n).unwrap_or(0))
            .sum();
        let share = eligible.div_ceil(members).max(1);
        let Some(before) = previous.get(member) else {
            continue;
        };
        let mut kept = 0usize;
        for (topic, parts) in before {
            let Some(&n) = partitions.get(topic) else {
                continue;
            };
            if !topics.contains(topic) {
                continue;
            }
            for &p in parts {
                if kept >= share || p >= n || !taken.insert((*topic, p)) {
                    continue;
                }
                out.entry(member.clone())
                    .or_default()
                    .entry(*topic)
                    .or_default()
                    .insert(p);
                kept += 1;
            }
        }
    }
    // 2. Every partition nobody kept goes to the least loaded member
    //    subscribed to its topic (ties: member id order).
    for (topic, &n) in partitions {
        let eligible: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, ts)| ts.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if eligible.is_empty() {
            continue;
        }
        for p in 0..n.max(0) {
            if taken.contains(&(*topic, p)) {
                continue;
            }
            let Some(least) = eligible
                .iter()
                .min_by_key(|m| out.get(m.as_str()).map_or(0, count))
            else {
                continue;
            };
            taken.insert((*topic, p));
            out.entry((*least).clone())
                .or_default()
                .entry(*topic)
                .or_default()
                .insert(p);
        }
    }
    // 3. Even out: move a partition from the most loaded member to an
    //    eligible member with at least two fewer, until none can move.
    //    Each move lowers the sum of squared counts, so this ends.
    loop {
        let mut moved = false;
        let mut by_load: Vec<(usize, String)> =
            out.iter().map(|(m, a)| (count(a), m.clone())).collect();
        by_load.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        'heavy: for (load, heavy) in &by_load {
            for (light_load, light) in by_load.iter().rev() {
                if light_load + 2 > *load {
                    break;
                }
                let Some(light_topics) = subscriptions.get(light) else {
                    continue;
                };
                let candidate = out.get(heavy).and_then(|a| {
                    a.iter()
                        .filter(|(t, _)| light_topics.contains(*t))
                        .find_map(|(t, ps)| ps.iter().next_back().map(|p| (*t, *p)))
                });
                if let Some((t, p)) = candidate {
                    if let Some(a) = out.get_mut(heavy) {
                        if let Some(ps) = a.get_mut(&t) {
                            ps.remove(&p);
                            if ps.is_empty() {
                                a.remove(&t);
                            }
                        }
                    }
                    out.entry(light.clone())
                        .or_default()
                        .entry(t)
                        .or_default()
                        .insert(p);
                    moved = true;
                    break 'heavy;
                }
            }
        }
        if !moved {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(members: &[(&str, &[Uuid])]) -> BTreeMap<String, BTreeSet<Uuid>> {
        members
            .iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().copied().collect()))
            .collect()
    }

    fn all(a: &BTreeMap<String, Assignment>) -> Vec<(Uuid, i32)> {
        let mut v: Vec<(Uuid, i32)> = a
            .values()
            .flat_map(|x| x.iter().flat_map(|(t, ps)| ps.iter().map(|p| (*t, *p))))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn uniform_spreads_evenly_and_covers_every_partition_once() {
        let t = Uuid::from_u128(1);
        let parts = BTreeMap::from([(t, 6)]);
        let s = subs(&[("a", &[t]), ("b", &[t]), ("c", &[t])]);
        let out = Assignor::Uniform.assign(&s, &parts, &BTreeMap::new());
        assert!(out.values().all(|a| count(a) == 2), "{out:?}");
        assert_eq!(all(&out), (0..6).map(|p| (t, p)).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_moves_only_what_a_newcomer_needs() {
        let t = Uuid::from_u128(1);
        let parts = BTreeMap::from([(t, 6)]);
        let s3 = subs(&[("a", &[t]), ("b", &[t]), ("c", &[t])]);
        let before = Assignor::Uniform.assign(&s3, &parts, &BTreeMap::new());
        let s4 = subs(&[("a", &[t]), ("b", &[t]), ("c", &[t]), ("d", &[t])]);
        let after = Assignor::Uniform.assign(&s4, &parts, &before);
        assert_eq!(all(&after).len(), 6);
        let moved: usize = ["a", "b", "c"]
            .iter()
            .map(|m| {
                let was = &before[*m][&t];
                let now = after[*m].get(&t).cloned().unwrap_or_default();
                was.difference(&now).count()
            })
            .sum();
        // Six over four members is 2, 2, 1, 1: only the newcomer's one moves.
        assert_eq!(moved, 1, "{before:?} -> {after:?}");
        let counts: Vec<usize> = after.values().map(count).collect();
        assert!(counts.iter().all(|&c| c == 1 || c == 2), "{counts:?}");
    }

    #[test]
    fn uniform_respects_different_subscriptions() {
        let (t1, t2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let parts = BTreeMap::from([(t1, 4), (t2, 2)]);
        let s = subs(&[("a", &[t1]), ("b", &[t1, t2])]);
        let out = Assignor::Uniform.assign(&s, &parts, &BTreeMap::new());
        assert!(!out["a"].contains_key(&t2));
        assert_eq!(all(&out).len(), 6);
        assert_eq!(count(&out["a"]), 3);
        assert_eq!(count(&out["b"]), 3);
    }

    #[test]
    fn range_copartitions_topics() {
        let (t1, t2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let parts = BTreeMap::from([(t1, 3), (t2, 3)]);
        let s = subs(&[("a", &[t1, t2]), ("b", &[t1, t2])]);
        let out = Assignor::Range.assign(&s, &parts, &BTreeMap::new());
        assert_eq!(out["a"][&t1], out["a"][&t2]);
        assert_eq!(out["a"][&t1], BTreeSet::from([0, 1]));
        assert_eq!(out["b"][&t1], BTreeSet::from([2]));
    }
}
