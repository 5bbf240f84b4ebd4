//! The token a WebSocket runs on: an in-band `refresh` replaces it without
//! reconnecting. Expiry (`token_expiring` ahead of `exp`, 4001 at `exp`)
//! comes from the process-wide [`crate::expiry::ExpiryWheel`]; revocations
//! and operator disconnects kill the connection through the user registry.

use axum::extract::ws::WebSocket;
use waypost_protocol::{Channel, ChannelKind, ServerFrame, UnsubscribeReason};

use super::conn::Conn;
use crate::auth::may_subscribe;
use crate::error::AppError;
use crate::now_s;
use crate::routes::orders::authorize_order_read;

impl Conn {
    /// `{"type":"refresh","token":".."}`: a valid token of the same user
    /// (and role) replaces the connection's; the answer is
    /// `{"type":"refreshed","exp":..}`, then `unsubscribed` (reason
    /// `forbidden`) for each subscription the new token no longer allows.
    /// A refused refresh is an `error` frame; the connection keeps its
    /// token (and still ends at its `exp`).
    pub(super) async fn refresh(&mut self, socket: &mut WebSocket, token: &str) -> Result<(), ()> {
        let new = match self.state.keys.verify_token(token) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .error(socket, "unauthorized", e.to_string(), None)
                    .await
            }
        };
        if new.claims.sub != self.claims.sub || new.claims.role != self.claims.role {
            return self
                .error(
                    socket,
                    "forbidden",
                    "a refresh must be a token of the same user and role",
                    None,
                )
                .await;
        }
        let exp = new.claims.exp;
        self.state
            .expiry
            .refresh(&self.handle, &self.expiry, exp, now_s());
        self.listed.update(&new);
        self.claims = new.claims;
        self.reply(socket, &ServerFrame::Refreshed { exp }).await?;
        let mut lost: Vec<Channel> = Vec::new();
        let current: Vec<Channel> = self.subscriptions.channels().cloned().collect();
        for c in current {
            let allowed = if c.kind == ChannelKind::Order {
                // As at subscribe: the claim order:{id}, service, or the
                // assigned driver; an unavailable store keeps it.
                !matches!(
                    authorize_order_read(&self.state, &self.claims, &c.id).await,
                    Err(AppError::Forbidden(_))
                )
            } else {
                may_subscribe(&self.claims, &c)
            };
            if !allowed {
                lost.push(c);
            }
        }
        for channel in lost {
            if let Some(sub) = self.subscriptions.remove(&channel) {
                self.leave(sub).await;
            }
            self.reply(
                socket,
                &ServerFrame::Unsubscribed {
                    channel: channel.to_string(),
                    reason: Some(UnsubscribeReason::Forbidden),
                },
            )
            .await?;
        }
        Ok(())
    }
}
