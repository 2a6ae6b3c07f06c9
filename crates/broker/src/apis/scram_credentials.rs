//! DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554):
//! the SCRAM users of the metadata store, managed with Kafka's admin
//! clients (the gate checks DESCRIBE or ALTER on the cluster first). The
//! client sends a salt and a salted password; the store keeps only the
//! derived keys, never a password.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tributary_runtime::Chain;

use super::str_bytes;
use crate::error::meta_error_code;
use crate::sasl::scram::{credential_from_salted, Mechanism, MAX_ITERATIONS, MIN_ITERATIONS};
use crate::Broker;

/// Longest user name accepted.
const MAX_USER_LEN: usize = 256;

pub async fn describe(
    broker: &Broker,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let all = match broker.security.list_scram_credentials().await {
        Ok(all) => all,
        Err(e) => {
            return DescribeUserScramCredentialsResponse::default()
                .with_error_code(meta_error_code(&e))
                .with_error_message(Some(str_bytes(&e.to_string())))
        }
    };
    let mut by_user: BTreeMap<String, Vec<CredentialInfo>> = BTreeMap::new();
    for (user, mechanism, iterations) in all {
        let Some(m) = Mechanism::parse(&mechanism) else {
            continue;
        };
        by_user.entry(user).or_default().push(
            CredentialInfo::default()
                .with_mechanism(m.kafka_id())
                .with_iterations(iterations),
        );
    }
    let result =
        |user: &str| DescribeUserScramCredentialsResult::default().with_user(str_bytes(user));
    let results = match req.users.filter(|u| !u.is_empty()) {
        None => by_user
            .into_iter()
            .map(|(user, infos)| result(&user).with_credential_infos(infos))
            .collect(),
        Some(users) => {
            let mut asked: HashMap<String, usize> = HashMap::new();
            for u in &users {
                *asked.entry(u.name.to_string()).or_default() += 1;
            }
            let mut seen = std::collections::HashSet::new();
            let mut results = Vec::new();
            for u in users {
                let name = u.name.to_string();
                if !seen.insert(name.clone()) {
                    continue;
                }
                results.push(if asked[&name] > 1 {
                    result(&name)
                        .with_error_code(ResponseError::DuplicateResource.code())
                        .with_error_message(Some(StrBytes::from_static_str(
                            "user named more than once",
                        )))
                } else {
                    match by_user.get(&name) {
                        Some(infos) => result(&name).with_credential_infos(infos.clone()),
                        None => result(&name)
                            .with_error_code(ResponseError::ResourceNotFound.code())
                            .with_error_message(Some(str_bytes(&format!(
                                "no SCRAM credential for user {name}"
                            )))),
                    }
                });
            }
            results
        }
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

pub async fn alter(
    broker: &Broker,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    // One answer per user, in the order users first appear; the first
    // problem of a user is its answer and none of its changes is made.
    let mut order: Vec<String> = Vec::new();
    let mut errors: HashMap<String, (i16, String)> = HashMap::new();
    let mut seen: HashMap<(String, i8), usize> = HashMap::new();
    let mut note = |user: &str, mechanism: i8, order: &mut Vec<String>| {
        if !order.iter().any(|u| u == user) {
            order.push(user.to_owned());
        }
        *seen.entry((user.to_owned(), mechanism)).or_default() += 1;
    };
    for d in &req.deletions {
        note(&d.name, d.mechanism, &mut order);
    }
    for u in &req.upsertions {
        note(&u.name, u.mechanism, &mut order);
    }
    let fail = |errors: &mut HashMap<String, (i16, String)>,
                user: &str,
                code: ResponseError,
                why: String| {
        errors.entry(user.to_owned()).or_insert((code.code(), why));
    };
    for ((user, _), n) in &seen {
        if *n > 1 {
            fail(
                &mut errors,
                user,
                ResponseError::DuplicateResource,
                "a user's mechanism is altered more than once in one request".into(),
            );
        }
        if user.is_empty() || user.len() > MAX_USER_LEN {
            fail(
                &mut errors,
                user,
                ResponseError::UnacceptableCredential,
                format!("a user name must be 1 to {MAX_USER_LEN} bytes"),
            );
        }
    }
    for d in &req.deletions {
        if Mechanism::from_kafka_id(d.mechanism).is_none() {
            fail(
                &mut errors,
                &d.name,
                ResponseError::UnsupportedSaslMechanism,
                format!("unknown SCRAM mechanism {}", d.mechanism),
            );
        }
    }
    for u in &req.upsertions {
        if Mechanism::from_kafka_id(u.mechanism).is_none() {
            fail(
                &mut errors,
                &u.name,
                ResponseError::UnsupportedSaslMechanism,
                format!("unknown SCRAM mechanism {}", u.mechanism),
            );
        } else if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&u.iterations) {
            fail(
                &mut errors,
                &u.name,
                ResponseError::UnacceptableCredential,
                format!(
                    "iterations must be {MIN_ITERATIONS} to {MAX_ITERATIONS}, got {}",
                    u.iterations
                ),
            );
        } else if u.salt.is_empty() || u.salted_password.is_empty() {
            fail(
                &mut errors,
                &u.name,
                ResponseError::UnacceptableCredential,
                "the salt and the salted password must not be empty".into(),
            );
        }
    }
    for d in &req.deletions {
        let (Some(m), false) = (
            Mechanism::from_kafka_id(d.mechanism),
            errors.contains_key(d.name.as_str()),
        ) else {
            continue;
        };
        match broker
            .security
            .delete_scram_credential(&d.name, m.name())
            .await
        {
            Ok(true) => {
                tracing::info!(user = %d.name, mechanism = m.name(), "SCRAM credential deleted")
            }
            Ok(false) => fail(
                &mut errors,
                &d.name,
                ResponseError::ResourceNotFound,
                format!("user {} has no {} credential", d.name, m.name()),
            ),
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "deleting a SCRAM credential failed");
                errors.insert(d.name.to_string(), (meta_error_code(&e), e.to_string()));
            }
        }
    }
    for u in &req.upsertions {
        let (Some(m), false) = (
            Mechanism::from_kafka_id(u.mechanism),
            errors.contains_key(u.name.as_str()),
        ) else {
            continue;
        };
        let credential = credential_from_salted(m, &u.salt, &u.salted_password, u.iterations);
        match broker
            .security
            .put_scram_credential(&u.name, &credential)
            .await
        {
            Ok(()) => tracing::info!(user = %u.name, mechanism = m.name(), "SCRAM credential set"),
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "storing a SCRAM credential failed");
                errors.insert(u.name.to_string(), (meta_error_code(&e), e.to_string()));
            }
        }
    }
    AlterUserScramCredentialsResponse::default().with_results(
        order
            .into_iter()
            .map(|user| {
                let result = AlterUserScramCredentialsResult::default().with_user(str_bytes(&user));
                match errors.remove(&user) {
                    Some((code, why)) => result
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(&why))),
                    None => result,
                }
            })
            .collect(),
    )
}
