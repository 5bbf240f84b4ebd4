//! Key and channel names of the Redis engine.

use waypost_protocol::Channel;

/// Key and channel names.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
    /// On a Redis Cluster: channel and watcher names carry the channel id
    /// as hash tag (`{id}`), the tag of the keys they go with (a driver's
    /// `{driver}` keys, a room's `{room}` keys), so the ingest script and
    /// its `SPUBLISH` stay on one slot. One Redis keeps the names of
    /// earlier versions.
    pub(crate) cluster: bool,
}

impl Keys {
    /// The hash tag of `channel`'s names on a cluster (empty on one Redis).
    fn tag(&self, channel: &Channel) -> String {
        if self.cluster {
            format!("{{{}}}:", channel.id)
        } else {
            String::new()
        }
    }
    pub(crate) fn driver(&self, driver_id: &str, part: &str) -> String {
        format!("{}:{{{driver_id}}}:{part}", self.prefix)
    }
    pub(crate) fn channel_prefix(&self) -> String {
        // `ch2`: payloads are frame envelopes (issue 16); versions that
        // published bare frames (on `ch`) never see them, and mixed
        // processes during a rolling update stay apart instead of
        // forwarding payloads they cannot read.
        format!("{}:ch2:", self.prefix)
    }
    pub(crate) fn watchers_prefix(&self) -> String {
        format!("{}:watchers:", self.prefix)
    }
    pub(crate) fn watchers(&self, channel: &Channel) -> String {
        format!("{}{}{channel}", self.watchers_prefix(), self.tag(channel))
    }
    pub(crate) fn channel(&self, channel: &Channel) -> String {
        format!("{}{}{channel}", self.channel_prefix(), self.tag(channel))
    }
    /// The channel a Redis channel name (from [`Keys::channel`]) is for.
    pub(crate) fn parse_channel(&self, name: &str) -> Option<Channel> {
        let rest = name.strip_prefix(self.channel_prefix().as_str())?;
        if !self.cluster {
            return Channel::from_name(rest);
        }
        // `{id}:kind:id`: the id may itself hold `}:`, so every split is
        // tried and the one that names the channel back wins.
        rest.match_indices("}:")
            .filter_map(|(i, _)| Channel::from_name(&rest[i + 2..]))
            .find(|ch| self.channel(ch) == name)
    }
    pub(crate) fn probe(&self, instance: &str) -> String {
        format!("{}:probe:{instance}", self.prefix)
    }
}
