//! Channel names: `tracking:{driver_id}` for a driver's live position and
//! `chat:{room}` for a chat room.

use std::fmt;

use crate::ids::{validate_id, IdError};

/// What a channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Tracking,
    Chat,
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

    /// Parses `tracking:{id}` or `chat:{id}`.
    pub fn parse(name: &str) -> Result<Self, ChannelError> {
        let (kind, id) = if let Some(id) = name.strip_prefix("tracking:") {
            (ChannelKind::Tracking, id)
        } else if let Some(id) = name.strip_prefix("chat:") {
            (ChannelKind::Chat, id)
        } else {
            return Err(ChannelError::UnknownKind(name.chars().take(80).collect()));
        };
        let what = match kind {
            ChannelKind::Tracking => "driver_id",
            ChannelKind::Chat => "room",
        };
        validate_id(what, id)?;
        Ok(Self {
            kind,
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            ChannelKind::Tracking => "tracking",
            ChannelKind::Chat => "chat",
        };
        write!(f, "{prefix}:{}", self.id)
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
