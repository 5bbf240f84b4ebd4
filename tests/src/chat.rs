//! Helpers for the chat and SSE suites: a small Server-Sent Events client
//! over reqwest (parses `id:`/`event:`/`data:` blocks, records comments),
//! and chat frame helpers on [`WsClient`].

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use crate::{token, Server, WsClient};
use waypost_protocol::Role;

/// A token for `sub` granting `chat:{room}`.
pub fn chat_token(sub: &str, role: Role, room: &str) -> String {
    token(sub, role, &[&format!("chat:{room}")])
}

/// A WebSocket of `sub` with a token granting `chat:{room}`.
pub async fn connect_chat(server: &Server, sub: &str, role: Role, room: &str) -> Result<WsClient> {
    WsClient::connect(&server.ws_url(&chat_token(sub, role, room))).await
}

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.data)?)
    }
}

/// A streaming `text/event-stream` response.
pub struct SseClient {
    resp: reqwest::Response,
    buf: String,
    /// Comment lines seen so far (without the leading `:`), e.g. keepalives.
    pub comments: Vec<String>,
    /// `retry:` values seen.
    pub retries: Vec<u64>,
    pub headers: reqwest::header::HeaderMap,
}

impl SseClient {
    /// Opens `url` with a bearer token and optional `Last-Event-ID`; fails
    /// unless the answer is 200.
    pub async fn connect(url: &str, token: &str, last_event_id: Option<&str>) -> Result<Self> {
        let resp = Self::request(url, token, last_event_id).await?;
        if resp.status() != reqwest::StatusCode::OK {
            let status = resp.status();
            bail!("{url}: {status} {}", resp.text().await.unwrap_or_default());
        }
        Ok(Self {
            headers: resp.headers().clone(),
            resp,
            buf: String::new(),
            comments: Vec::new(),
            retries: Vec::new(),
        })
    }

    /// The raw response, for status checks of refused streams.
    pub async fn request(
        url: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut req = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        Ok(req.send().await?)
    }

    /// Parses one complete block from the buffer, if there is one.
    fn take_block(&mut self) -> Option<Option<SseEvent>> {
        let end = self.buf.find("\n\n")?;
        let block: String = self.buf.drain(..end + 2).collect();
        let mut ev = SseEvent {
            id: None,
            event: "message".into(),
            data: String::new(),
        };
        let mut has_data = false;
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                self.comments.push(c.trim().to_owned());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => ev.id = Some(value.to_owned()),
                "event" => ev.event = value.to_owned(),
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                "retry" => self.retries.extend(value.parse::<u64>().ok()),
                _ => {}
            }
        }
        Some(has_data.then_some(ev))
    }

    /// Reads more bytes; false when the stream ended.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<bool> {
        let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
            .await
            .map_err(|_| anyhow!("no SSE data in time"))??;
        match chunk {
            Some(bytes) => {
                self.buf.push_str(std::str::from_utf8(&bytes)?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next event within `within` (comments are recorded, not returned).
    pub async fn next_event(&mut self, within: Duration) -> Result<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(block) = self.take_block() {
                if let Some(ev) = block {
                    return Ok(ev);
                }
            }
            if !self.fill(deadline).await? {
                bail!("SSE stream ended");
            }
        }
    }

    /// Waits until at least `n` comments were seen.
    pub async fn wait_comments(&mut self, n: usize, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(block) = self.take_block() {
                if let Some(ev) = block {
                    bail!("expected a comment, got event {ev:?}");
                }
            }
            if self.comments.len() >= n {
                return Ok(());
            }
            if !self.fill(deadline).await? {
                bail!("SSE stream ended");
            }
        }
    }

    /// Whether the server ends the stream within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
            }
        }
    }
}

impl WsClient {
    /// Sends a chat message and waits for its `sent` ack (skipping other
    /// frames; fails on an `error` for this client_id).
    pub async fn send_chat(&mut self, room: &str, client_id: &str, body: &str) -> Result<Value> {
        self.send_json(
            &json!({"type": "send", "room": room, "client_id": client_id, "body": body}),
        )
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.next_json(left).await?;
            match v["type"].as_str() {
                Some("sent") if v["client_id"] == client_id => return Ok(v),
                Some("error") if v["ref"] == client_id => bail!("send refused: {v}"),
                _ => continue,
            }
        }
    }

    /// Collects `message` frames of `room` until `n` arrived (other frames
    /// skipped); errors when they do not come within `within`.
    pub async fn messages(&mut self, room: &str, n: usize, within: Duration) -> Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .next_json(left)
                .await
                .map_err(|e| anyhow!("after {} of {n} messages: {e}", out.len()))?;
            if v["type"] == "message" && v["room"] == room {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Frames arriving within `within` (for checking that nothing else came).
    pub async fn drain(&mut self, within: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.next_json(left).await {
                Ok(v) => out.push(v),
                Err(_) => return out,
            }
        }
    }
}

/// The seqs of a list of `message` frames.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().filter_map(|m| m["seq"].as_u64()).collect()
}
