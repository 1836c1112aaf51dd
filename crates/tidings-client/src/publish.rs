//! Publishing: Mercure's `POST /.well-known/mercure` and Tidings' session API.

use std::time::Duration;

use crate::{Error, Hub};

/// Attempts at a publish whose outcome stays unknown ([`Error::is_outcome_unknown`]) before
/// the error is returned; every attempt carries the same id, which the hub stores once.
const PUBLISH_ATTEMPTS: u32 = 4;

/// The wait before the first retry; doubled before each next one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);

/// A fresh update id, for a publication that has none: its retries must carry one.
fn generated_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

/// One update to publish (Mercure's publish form). Build it with [`Publication::new`] and the
/// methods that follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    pub(crate) topics: Vec<String>,
    pub(crate) data: String,
    pub(crate) id: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) private: bool,
    pub(crate) retry: Option<u64>,
}

impl Publication {
    /// An update on `topic`, with empty data.
    pub fn new(topic: impl Into<String>) -> Self {
        Publication {
            topics: vec![topic.into()],
            ..Publication::default()
        }
    }

    /// Adds another topic.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// The payload (text; may span lines).
    #[must_use]
    pub fn data(mut self, data: impl Into<String>) -> Self {
        self.data = data.into();
        self
    }

    /// The update's id. Without one, [`Hub::publish`] generates a `urn:uuid:` id, so that
    /// a retry of an unanswered publish is recognised by the hub.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The SSE event name.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Only subscribers authorized for one of the topics receive it.
    #[must_use]
    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }

    /// The reconnection delay hint for subscribers, in milliseconds.
    #[must_use]
    pub fn retry(mut self, millis: u64) -> Self {
        self.retry = Some(millis);
        self
    }

    /// The bus wire-format (version 1) message of this update: what an instance writes to
    /// the broker for an HTTP publish.
    pub fn wire_message(&self) -> String {
        let mut message = serde_json::json!({"v": 1, "topics": self.topics, "data": self.data});
        if let Some(id) = &self.id {
            message["id"] = id.as_str().into();
        }
        if let Some(event_type) = &self.event_type {
            message["type"] = event_type.as_str().into();
        }
        if self.private {
            message["private"] = true.into();
        }
        if let Some(retry) = self.retry {
            message["retry"] = retry.into();
        }
        message.to_string()
    }

    /// The form body of the publish request.
    fn form(&self) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for topic in &self.topics {
            form.append_pair("topic", topic);
        }
        form.append_pair("data", &self.data);
        if let Some(id) = &self.id {
            form.append_pair("id", id);
        }
        if let Some(event_type) = &self.event_type {
            form.append_pair("type", event_type);
        }
        if self.private {
            form.append_pair("private", "on");
        }
        if let Some(retry) = self.retry {
            form.append_pair("retry", &retry.to_string());
        }
        form.finish()
    }
}

impl Hub {
    /// Publishes an update; returns its id once the hub accepted it (with a broker-backed
    /// hub: once the broker took it).
    ///
    /// A publish whose outcome is unknown (the hub answered `504 publish_outcome_unknown`, or
    /// did not answer in time) is retried with the same id — generated here when the
    /// publication has none — up to 4 attempts in all: the update is stored once.
    ///
    /// # Errors
    /// [`Error::Refused`] when the hub refused it (bad input, no right to publish, bus
    /// unavailable); [`Error::Transport`] when the hub could not be reached.
    pub async fn publish(&self, publication: &Publication) -> Result<String, Error> {
        let mut publication = publication.clone();
        publication.id.get_or_insert_with(generated_id);
        let form = publication.form();
        self.idempotent(|| {
            self.http
                .post(self.url("/.well-known/mercure"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.clone())
        })
        .await
    }

    /// Delivers `payload` to every stream of session `session_id` for `event_name`, wherever
    /// it is connected (Tidings' session API, `POST /sse/events`); returns the update's id.
    ///
    /// # Errors
    /// As for [`Hub::publish`].
    pub async fn send_event(
        &self,
        session_id: &str,
        event_name: &str,
        payload: &serde_json::Value,
    ) -> Result<String, Error> {
        let body = serde_json::json!({
            "sessionId": session_id,
            "eventName": event_name,
            "payload": payload,
            "id": generated_id(),
        })
        .to_string();
        let answer = self
            .idempotent(|| {
                self.http
                    .post(self.url("/sse/events"))
                    .header("content-type", "application/json")
                    .body(body.clone())
            })
            .await?;
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        Ok(answer["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Sends a publish request built by `request` until its outcome is known (see
    /// [`Hub::publish`]); the body as text when the hub accepted it.
    async fn idempotent(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<String, Error> {
        let mut delay = FIRST_RETRY_DELAY;
        for _ in 1..PUBLISH_ATTEMPTS {
            match self.accepted(self.authorized(request())).await {
                Err(e) if e.is_outcome_unknown() => {
                    tracing::debug!(error = %e, ?delay, "publish outcome unknown; retrying with the same id");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                answer => return answer,
            }
        }
        self.accepted(self.authorized(request())).await
    }

    /// Sends a request; its body as text when the hub accepted it.
    async fn accepted(&self, request: reqwest::RequestBuilder) -> Result<String, Error> {
        let response = request
            .timeout(self.publish_timeout)
            .send()
            .await
            .map_err(Error::Transport)?;
        if !response.status().is_success() {
            return Err(Error::refused(response).await);
        }
        let text = response.text().await.map_err(Error::Transport)?;
        Ok(text.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::Publication;

    #[test]
    fn the_form_carries_every_field_once() {
        let form = Publication::new("a b")
            .topic("c&d")
            .data("x=1\ny")
            .id("i")
            .event_type("t")
            .private()
            .retry(250)
            .form();
        assert_eq!(
            form,
            "topic=a+b&topic=c%26d&data=x%3D1%0Ay&id=i&type=t&private=on&retry=250"
        );
        assert_eq!(Publication::new("t").form(), "topic=t&data=");
    }

    #[test]
    fn the_wire_message_has_only_the_fields_set() {
        let full: serde_json::Value = serde_json::from_str(
            &Publication::new("a")
                .topic("b")
                .data("d")
                .id("i")
                .event_type("t")
                .private()
                .retry(5)
                .wire_message(),
        )
        .unwrap();
        assert_eq!(
            full,
            serde_json::json!({"v": 1, "topics": ["a", "b"], "data": "d", "id": "i",
                               "type": "t", "private": true, "retry": 5})
        );
        let minimal: serde_json::Value =
            serde_json::from_str(&Publication::new("a").wire_message()).unwrap();
        assert_eq!(
            minimal,
            serde_json::json!({"v": 1, "topics": ["a"], "data": ""})
        );
    }
}
