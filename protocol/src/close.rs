//! WebSocket close codes of the contract and whether a client should
//! reconnect after each.

/// Close codes the server uses.
pub mod close_code {
    /// 4001: the token is missing, invalid or expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// 4003: the token does not allow what was asked, was revoked, or an
    /// operator disconnected the user without allowing a reconnect.
    pub const FORBIDDEN: u16 = 4003;
    /// 4008: a frame could not be understood or broke a limit.
    pub const BAD_FRAME: u16 = 4008;
    /// 4029: the connection sent more messages per second than allowed
    /// (a Waypost extension in the "do not reconnect as is" range).
    pub const RATE_LIMITED: u16 = 4029;
    /// 4100: the server is shutting down.
    pub const SHUTTING_DOWN: u16 = 4100;
    /// 4101: the client read too slowly and its queue overflowed.
    pub const TOO_SLOW: u16 = 4101;
    /// 4102: the server is overloaded.
    pub const OVERLOADED: u16 = 4102;
    /// 4103: an operator closed the connection and allows reconnecting
    /// (`POST /v1/admin/disconnect` with `reconnect: true`).
    pub const DISCONNECTED: u16 = 4103;
}

/// What a client should do after a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseDisposition {
    /// 4000–4099: do not reconnect as is (fix the token or the request first).
    Stop,
    /// 4100–4199 and transport-level closes: reconnect with backoff and jitter.
    Reconnect,
}

/// 4000–4099 stop, everything else (4100–4199, 1000–1015, no code) reconnects.
pub fn should_reconnect(code: Option<u16>) -> CloseDisposition {
    match code {
        Some(4000..=4099) => CloseDisposition::Stop,
        _ => CloseDisposition::Reconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            should_reconnect(Some(close_code::UNAUTHORIZED)),
            CloseDisposition::Stop
        );
        assert_eq!(
            should_reconnect(Some(close_code::RATE_LIMITED)),
            CloseDisposition::Stop
        );
        assert_eq!(
            should_reconnect(Some(close_code::TOO_SLOW)),
            CloseDisposition::Reconnect
        );
        assert_eq!(should_reconnect(Some(1006)), CloseDisposition::Reconnect);
        assert_eq!(should_reconnect(None), CloseDisposition::Reconnect);
    }
}
