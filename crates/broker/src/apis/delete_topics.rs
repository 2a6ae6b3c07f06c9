//! DeleteTopics: delete topics by name or id; their index entries go and
//! their segment objects are left to the janitor.

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name};
use crate::error::meta_error_code;
use crate::Broker;

pub async fn handle(
    broker: &Broker,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6+ names topics in `topics` (by name or id); older versions in `topic_names`.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets.drain(..) {
        let name = match name {
            Some(n) => Some(n),
            None => match broker.topic_store.get_topic_by_id(id).await {
                Ok(t) => t.map(|t| t.name),
                Err(_) => None,
            },
        };
        let result = DeletableTopicResult::default()
            .with_name(name.as_deref().map(topic_name))
            .with_topic_id(id);
        let Some(name) = name else {
            responses.push(result.with_error_code(ResponseError::UnknownTopicId.code()));
            continue;
        };
        match broker.topic_store.delete_topic(&name).await {
            Ok(orphans) => {
                broker.topics.invalidate(&name).await;
                // The segments are now dead; the janitor deletes their objects
                // after the grace period (readers may be mid-GET).
                // Its committed group offsets went in the same transaction.
                tracing::info!(topic = %name, segments = orphans.len(), "deleted topic");
                responses.push(result);
            }
            Err(e) => responses.push(
                result
                    .with_error_code(meta_error_code(&e))
                    .with_error_message(Some(str_bytes(&e.to_string()))),
            ),
        }
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
