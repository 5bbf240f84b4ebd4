//! Channel names: `tracking:{driver_id}` for a driver's live position,
//! `chat:{room}` for a chat room, and the server's own `user:{sub}` (a
//! user's messages on all its devices) and `vendor:{vendor_id}` (a vendor's
//! notifications). Clients subscribe to tracking and chat channels
//! ([`Channel::parse`]); every kind is printed and read back in one place
//! ([`ChannelKind::name`], [`Channel::from_name`]), so a new kind (e.g.
//! `order`) is one variant here.

use std::fmt;

use crate::ids::{validate_id, IdError};

/// What a channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Tracking,
    Chat,
    /// Server-internal: copies of a user's own messages for its devices.
    User,
    /// Server-internal: a vendor's notifications (SSE).
    Vendor,
    /// An order's lifecycle entries and, while it is active, its driver's
    /// locations.
    Order,
    /// Server-internal: messages between server processes (revocations,
    /// disconnects) and session frames for one connection.
    Control,
}

impl ChannelKind {
    /// Every kind, for lookups by name.
    pub const ALL: [ChannelKind; 6] = [
        Self::Tracking,
        Self::Chat,
        Self::User,
        Self::Vendor,
        Self::Order,
        Self::Control,
    ];

    /// The name before the colon (also the metric label).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tracking => "tracking",
            Self::Chat => "chat",
            Self::User => "user",
            Self::Vendor => "vendor",
            Self::Order => "order",
            Self::Control => "control",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether a client may ask for it in a `subscribe` frame.
    pub const fn client_subscribable(self) -> bool {
        matches!(self, Self::Tracking | Self::Chat | Self::Order)
    }

    /// What the id of a channel of this kind names (for error messages).
    const fn id_name(self) -> &'static str {
        match self {
            Self::Tracking => "driver_id",
            Self::Chat => "room",
            Self::User => "user",
            Self::Vendor => "vendor_id",
            Self::Order => "order_id",
            Self::Control => "name",
        }
    }
}

/// A parsed, validated channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel {
    pub kind: ChannelKind,
    /// The driver id (tracking) or room id (chat).
    pub id: String,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("unknown channel kind in {0:?}; expected tracking:{{driver}} or chat:{{room}}")]
    UnknownKind(String),
    #[error(transparent)]
    Id(#[from] IdError),
}

impl Channel {
    pub fn tracking(driver_id: impl Into<String>) -> Self {
        Self {
            kind: ChannelKind::Tracking,
            id: driver_id.into(),
        }
    }

    pub fn chat(room: impl Into<String>) -> Self {
        Self {
            kind: ChannelKind::Chat,
            id: room.into(),
        }
    }

    /// The channel every connection of user `sub` listens on.
    pub fn user(sub: impl Into<String>) -> Self {
        Self {
            kind: ChannelKind::User,
            id: sub.into(),
        }
    }

    /// A vendor's notification channel.
    pub fn vendor(vendor_id: impl Into<String>) -> Self {
        Self {
            kind: ChannelKind::Vendor,
            id: vendor_id.into(),
        }
    }

    /// An order's channel.
    pub fn order(order_id: impl Into<String>) -> Self {
        Self {
            kind: ChannelKind::Order,
            id: order_id.into(),
        }
    }

    /// A server-internal control channel.
    pub fn control(name: impl Into<String>) -> Self {
        Self {
            kind: ChannelKind::Control,
            id: name.into(),
        }
    }

    /// Parses a channel a client may subscribe to: `tracking:{id}` or
    /// `chat:{id}`, with a valid id.
    pub fn parse(name: &str) -> Result<Self, ChannelError> {
        let kind = name
            .split_once(':')
            .and_then(|(kind, _)| ChannelKind::from_name(kind))
            .filter(|k| k.client_subscribable())
            .ok_or_else(|| ChannelError::UnknownKind(name.chars().take(80).collect()))?;
        let id = &name[kind.name().len() + 1..];
        validate_id(kind.id_name(), id)?;
        Ok(Self {
            kind,
            id: id.to_owned(),
        })
    }

    /// Reads back any name [`Display`](fmt::Display) printed (every kind,
    /// the id not validated: it was when the channel was made). `None` for
    /// an unknown kind or an empty id.
    pub fn from_name(name: &str) -> Option<Self> {
        let (kind, id) = name.split_once(':')?;
        let kind = ChannelKind::from_name(kind)?;
        (!id.is_empty()).then(|| Self {
            kind,
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let c = Channel::parse("tracking:d-17").unwrap();
        assert_eq!(c, Channel::tracking("d-17"));
        assert_eq!(c.to_string(), "tracking:d-17");
        assert_eq!(
            Channel::parse("chat:order-42").unwrap().kind,
            ChannelKind::Chat
        );
    }

    #[test]
    fn every_kind_reads_back_what_it_prints() {
        for c in [
            Channel::tracking("d-1"),
            Channel::chat("r"),
            Channel::user("u@x"),
            Channel::vendor("v-1"),
        ] {
            assert_eq!(Channel::from_name(&c.to_string()), Some(c));
        }
        assert_eq!(Channel::from_name("nope:1"), None);
        assert_eq!(Channel::from_name("user:"), None);
        assert_eq!(Channel::from_name("tracking"), None);
    }

    #[test]
    fn refuses_unknown_and_bad_ids() {
        assert!(matches!(
            Channel::parse("user:1"),
            Err(ChannelError::UnknownKind(_))
        ));
        assert!(matches!(Channel::parse("chat:"), Err(ChannelError::Id(_))));
        assert!(matches!(
            Channel::parse("tracking:a b"),
            Err(ChannelError::Id(_))
        ));
    }
}
