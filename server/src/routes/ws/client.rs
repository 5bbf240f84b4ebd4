//! What the client asks for over the WebSocket: `subscribe` (the tracking
//! replay here, chat rooms through [`Rooms`](super::rooms::Rooms)),
//! `unsubscribe`, `send`, `edit`, `delete`, `receipt`, `sync`, `typing` and
//! `ping`, each answered with
//! frames or an `error` frame.

use std::time::Instant;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use waypost_protocol::msgpack::msgpack_to_value;
use waypost_protocol::{
    close_code, Channel, ChannelKind, ClientFrame, ReceiptKind, Role, ServerFrame,
};

use super::conn::{Conn, Next, MAX_RATE_VIOLATIONS};
use super::encoding::Encoding;
use crate::auth::may_subscribe;
use crate::chat::{authorize_room, ChatError, Post};
use crate::engine::chat::Appended;
use crate::error::AppError;
use crate::frame::Frame;
use crate::hub::Outbound;
use crate::now_ms;
use crate::routes::orders::authorize_order_read;
use crate::routes::subscription::Subscription;

/// A client frame's body before decoding.
enum Incoming {
    Json(Utf8Bytes),
    Msgpack(Bytes),
}

/// Client frames.
impl Conn {
    pub(super) async fn reply(
        &self,
        socket: &mut WebSocket,
        frame: &ServerFrame,
    ) -> Result<(), ()> {
        socket
            .send(self.encoding.message(frame.to_json().into()))
            .await
            .map_err(|_| ())
    }

    pub(super) async fn error(
        &self,
        socket: &mut WebSocket,
        code: &str,
        message: impl Into<String>,
        reference: Option<String>,
    ) -> Result<(), ()> {
        self.reply(socket, &ServerFrame::error(code, message, reference))
            .await
    }

    /// Answers a chat operation's error with an `error` frame: the same
    /// code and message as over HTTP, storage details only logged.
    async fn op_error(
        &self,
        socket: &mut WebSocket,
        e: ChatError,
        reference: String,
    ) -> Result<(), ()> {
        let e = AppError::from(e);
        let message = match &e {
            AppError::Engine(err) => {
                tracing::warn!(error = %err, "engine error on a chat frame");
                "the storage engine is unavailable, retry later".to_owned()
            }
            other => other.to_string(),
        };
        self.error(socket, e.code(), message, Some(reference)).await
    }

    pub(super) async fn on_message(
        &mut self,
        socket: &mut WebSocket,
        msg: Message,
    ) -> Result<Next, ()> {
        // A MessagePack connection sends binary frames (JSON text is read
        // too); a JSON connection text only.
        let body = match msg {
            Message::Text(t) => Incoming::Json(t),
            Message::Binary(b) if self.encoding != Encoding::Json => Incoming::Msgpack(b),
            Message::Binary(_) => {
                self.error(socket, "bad_frame", "binary frames are not supported", None)
                    .await?;
                return Ok(Next::Close(close_code::BAD_FRAME, "binary frame"));
            }
            Message::Close(_) => return Err(()),
            Message::Ping(_) | Message::Pong(_) => return Ok(Next::Continue),
        };
        if self.bucket.take(Instant::now()).is_err() {
            self.rate_violations += 1;
            self.state
                .metrics
                .limit_hits
                .with_label_values(&["ws_rate"])
                .inc();
            if self.rate_violations >= MAX_RATE_VIOLATIONS {
                return Ok(Next::Close(
                    close_code::RATE_LIMITED,
                    "message rate exceeded",
                ));
            }
            self.error(
                socket,
                "rate_limited",
                format!(
                    "more than {} messages per second; message dropped",
                    self.state.limits.ws_messages_per_s
                ),
                None,
            )
            .await?;
            return Ok(Next::Continue);
        }
        self.rate_violations = 0;
        let value = match body {
            Incoming::Json(text) => match serde_json::from_str(&text) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    self.error(socket, "bad_frame", "frames must be JSON objects", None)
                        .await?;
                    return Ok(Next::Close(close_code::BAD_FRAME, "invalid JSON"));
                }
            },
            Incoming::Msgpack(bytes) => match msgpack_to_value(&bytes) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                _ => {
                    self.error(socket, "bad_frame", "frames must be MessagePack maps", None)
                        .await?;
                    return Ok(Next::Close(close_code::BAD_FRAME, "invalid MessagePack"));
                }
            },
        };
        let frame: ClientFrame = match serde_json::from_value(value) {
            Ok(f) => f,
            Err(e) => {
                self.error(socket, "bad_frame", e.to_string(), None).await?;
                return Ok(Next::Continue);
            }
        };
        match frame {
            ClientFrame::Subscribe { channel, after } => {
                self.subscribe(socket, channel, after).await?
            }
            ClientFrame::Unsubscribe { channel } => {
                let sub = Channel::from_name(&channel).and_then(|c| self.subscriptions.remove(&c));
                if let Some(sub) = sub {
                    self.leave(sub).await;
                }
                self.reply(
                    socket,
                    &ServerFrame::Unsubscribed {
                        channel,
                        reason: None,
                    },
                )
                .await?;
            }
            ClientFrame::Ping { id } => self.reply(socket, &ServerFrame::Pong { id }).await?,
            ClientFrame::Send {
                room,
                client_id,
                body,
                attachments,
            } => {
                let post = Post {
                    client_id,
                    body,
                    attachments,
                    kind: None,
                };
                self.send_message(socket, room, post).await?
            }
            ClientFrame::Edit {
                room,
                seq,
                body,
                client_id,
            } => self.amend(socket, room, seq, Some(body), client_id).await?,
            ClientFrame::Delete {
                room,
                seq,
                client_id,
            } => self.amend(socket, room, seq, None, client_id).await?,
            ClientFrame::Receipt { room, seq, kind } => {
                self.receipt(socket, room, seq, kind).await?
            }
            ClientFrame::Sync {
                room,
                after_seq,
                limit,
            } => self.sync(socket, room, after_seq, limit).await?,
            ClientFrame::Typing { room } => self.typing(socket, room).await?,
            ClientFrame::Refresh { token } => self.refresh(socket, &token).await?,
        }
        Ok(Next::Continue)
    }

    /// Told, then closed with 4102: the client reconnects with backoff and
    /// subscribes again (nothing else would retry it).
    async fn subscribe_failed(&self, socket: &mut WebSocket, name: String) -> Result<(), ()> {
        self.handle.kill(close_code::OVERLOADED);
        self.error(
            socket,
            "engine_unavailable",
            "subscription failed, retry later",
            Some(name),
        )
        .await
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        name: String,
        after: Option<u64>,
    ) -> Result<(), ()> {
        let channel = match Channel::parse(&name) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .error(socket, "bad_channel", e.to_string(), Some(name))
                    .await
            }
        };
        let allowed = if channel.kind == ChannelKind::Order {
            // The claim order:{id}, service, or the assigned driver.
            match authorize_order_read(&self.state, &self.claims, &channel.id).await {
                Ok(_) => true,
                Err(AppError::Forbidden(_)) => false,
                Err(e) => {
                    tracing::warn!(error = %e, channel = %name, "order unavailable at subscribe");
                    return self.subscribe_failed(socket, name).await;
                }
            }
        } else {
            may_subscribe(&self.claims, &channel)
        };
        if !allowed {
            return self
                .error(
                    socket,
                    "forbidden",
                    format!("token does not grant {name}"),
                    Some(name),
                )
                .await;
        }
        let max = self.state.limits.max_channels_per_connection;
        if !self.subscriptions.contains(&channel) && self.subscriptions.len() >= max {
            self.state
                .metrics
                .limit_hits
                .with_label_values(&["channels"])
                .inc();
            return self
                .error(
                    socket,
                    "too_many_channels",
                    format!("at most {max} channels per connection"),
                    Some(name),
                )
                .await;
        }
        if !self.subscriptions.contains(&channel) {
            match Subscription::join(&self.state, channel.clone(), &self.handle).await {
                Ok(sub) => {
                    self.subscriptions.insert(sub);
                }
                Err(e) => {
                    tracing::warn!(error = %e, channel = %name, "subscribe failed");
                    return self.subscribe_failed(socket, name).await;
                }
            }
        }
        // A (re)subscribe starts the channel's lean location frames over:
        // the next one is full.
        if let Some(sub) = self.subscriptions.get_mut(&channel) {
            sub.last_location = None;
        }
        if channel.kind == ChannelKind::Chat {
            let sub = &self.claims.sub;
            let joined = self
                .rooms
                .subscribe(&self.state, sub, name.clone(), channel.id.clone(), after)
                .await;
            return match joined {
                Ok(frames) => {
                    for frame in &frames {
                        self.reply(socket, frame).await?;
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(error = %e, room = %channel.id, "chat history unavailable at subscribe");
                    if let Some(sub) = self.subscriptions.remove(&channel) {
                        self.leave(sub).await;
                    }
                    self.subscribe_failed(socket, name).await
                }
            };
        }
        if channel.kind == ChannelKind::Order {
            let joined = self
                .orders
                .subscribe(&self.state, name.clone(), &channel.id, after)
                .await;
            return match joined {
                Ok(frames) => {
                    for text in frames {
                        socket
                            .send(self.encoding.message(text))
                            .await
                            .map_err(|_| ())?;
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(error = %e, order = %channel.id, "order timeline unavailable at subscribe");
                    if let Some(sub) = self.subscriptions.remove(&channel) {
                        self.leave(sub).await;
                    }
                    self.subscribe_failed(socket, name).await
                }
            };
        }
        let latest = match self.state.engine.latest(&channel.id, now_ms()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "latest position unavailable at subscribe");
                None
            }
        };
        let high_seq = latest.as_ref().map(|l| l.fix.seq);
        self.reply(
            socket,
            &ServerFrame::Subscribed {
                channel: name.clone(),
                recovered: true,
                high_seq,
            },
        )
        .await?;
        // Replay: the current position, unless the client already has it.
        if let Some(l) = latest {
            if after.is_none_or(|a| l.fix.seq > a) && self.encoding == Encoding::Lean {
                // Lean: written like a live frame, so that it is the base
                // of the next one.
                let frame = Frame::location(&channel.id, &l.fix, crate::frame::now_us());
                let out = Outbound::new(frame, ChannelKind::Tracking);
                let message = self.outgoing(&out, out.text.clone());
                socket.send(message).await.map_err(|_| ())?;
            } else if after.is_none_or(|a| l.fix.seq > a) {
                let frame = ServerFrame::Location {
                    channel: name,
                    driver_id: channel.id,
                    fix: l.fix,
                };
                self.reply(socket, &frame).await?;
            }
        }
        Ok(())
    }

    async fn send_message(
        &mut self,
        socket: &mut WebSocket,
        room: String,
        post: Post,
    ) -> Result<(), ()> {
        let client_id = post.client_id.clone();
        if let Err(e) = authorize_room(&self.claims, &room) {
            return self.op_error(socket, e, client_id).await;
        }
        let posted = self
            .state
            .chat()
            .post_message(&room, &self.claims.sub, false, post)
            .await;
        self.ack(socket, posted, client_id).await
    }

    /// `edit` (with a body) or `delete`: acked with `sent` (its `client_id`
    /// the client's, or made by the server), errors refer to the room.
    async fn amend(
        &mut self,
        socket: &mut WebSocket,
        room: String,
        seq: u64,
        body: Option<String>,
        client_id: Option<String>,
    ) -> Result<(), ()> {
        if let Err(e) = authorize_room(&self.claims, &room) {
            return self.op_error(socket, e, room).await;
        }
        let service = self.claims.role == Role::Service;
        let done = self
            .state
            .chat()
            .amend(&room, &self.claims.sub, service, seq, body, client_id)
            .await;
        self.ack(socket, done, room).await
    }

    /// Moves this user's receipt marker; the `receipt` frame comes back
    /// through the room (and the user's other devices). Errors refer to the
    /// room.
    async fn receipt(
        &mut self,
        socket: &mut WebSocket,
        room: String,
        seq: u64,
        kind: ReceiptKind,
    ) -> Result<(), ()> {
        if let Err(e) = authorize_room(&self.claims, &room) {
            return self.op_error(socket, e, room).await;
        }
        let marked = self
            .state
            .chat()
            .receipt(&room, &self.claims.sub, kind, seq)
            .await;
        match marked {
            Ok(_) => Ok(()),
            Err(e) => self.op_error(socket, e, room).await,
        }
    }

    /// Answers a stored message with `sent`, a failure with an `error`
    /// frame referring to `reference`.
    async fn ack(
        &mut self,
        socket: &mut WebSocket,
        posted: Result<Appended, ChatError>,
        reference: String,
    ) -> Result<(), ()> {
        match posted {
            Ok(appended) => {
                let m = appended.message();
                let ack = ServerFrame::Sent {
                    client_id: m.client_id.clone(),
                    room: m.room.clone(),
                    seq: m.seq,
                    id: m.id.clone(),
                };
                self.reply(socket, &ack).await
            }
            Err(e) => self.op_error(socket, e, reference).await,
        }
    }

    async fn sync(
        &mut self,
        socket: &mut WebSocket,
        room: String,
        after_seq: u64,
        limit: Option<u32>,
    ) -> Result<(), ()> {
        if let Err(e) = authorize_room(&self.claims, &room) {
            return self.op_error(socket, e, room).await;
        }
        let limit = limit.map(|l| l as usize);
        match self.state.chat().history(&room, after_seq, limit).await {
            Ok(h) => {
                let more = h.more();
                let frame = ServerFrame::Synced {
                    room,
                    messages: h.messages,
                    more,
                };
                self.reply(socket, &frame).await
            }
            Err(e) => self.op_error(socket, e, room).await,
        }
    }

    /// Publishes `typing` unless this connection did so for the room within
    /// the typing interval (then it is dropped silently: it is ephemeral).
    async fn typing(&mut self, socket: &mut WebSocket, room: String) -> Result<(), ()> {
        if let Err(e) = authorize_room(&self.claims, &room) {
            return self.op_error(socket, e, room).await;
        }
        if !self
            .rooms
            .typing_allowed(&self.state, &room, Instant::now())
        {
            self.state
                .metrics
                .limit_hits
                .with_label_values(&["typing"])
                .inc();
            return Ok(());
        }
        let published = self
            .state
            .chat()
            .publish_typing(&room, &self.claims.sub)
            .await;
        if let Err(e) = published {
            return self.op_error(socket, e, room).await;
        }
        Ok(())
    }
}
