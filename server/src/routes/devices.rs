//! Push device registration (issue 19):
//!
//! - `POST /v1/devices` `{"device_id","platform":"apns"|"fcm","token",
//!   "app_id"?,"locale"?,"muted"?}` → `{"device_id","channels"}`
//! - `DELETE /v1/devices/{device_id}` → 204
//!
//! Any authenticated user. A device records the chat, order and vendor
//! channels the caller's token grants now; pushes come for those (minus
//! `muted`). Registering the same `device_id` again replaces it (a new
//! token, a new mute list, the channels of the newer token).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use waypost_protocol::{
    validate_id, Channel, ChannelKind, Claims, DeviceRegistered, DeviceRegistration, Role,
};

use crate::auth::Authed;
use crate::error::AppError;
use crate::push::devices::{Device, Platform, Registered};
use crate::state::AppState;

/// Longest provider token (APNs tokens are 64 hex digits today, FCM
/// registration tokens about 160 characters).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest `app_id` (an APNs topic, e.g. a bundle id).
const MAX_APP_ID_LEN: usize = 255;
/// Longest `locale` (a BCP 47 tag).
const MAX_LOCALE_LEN: usize = 35;
/// Most channels recorded or muted per device.
pub const MAX_DEVICE_CHANNELS: usize = 64;

fn bad(code: &'static str, message: impl Into<String>) -> AppError {
    AppError::bad(code, message)
}

/// Checks a registration and turns it into a device of `claims.sub`.
pub fn validate(claims: &Claims, reg: DeviceRegistration, now_ms: i64) -> Result<Device, AppError> {
    validate_id("device_id", &reg.device_id).map_err(|e| bad("bad_id", e.to_string()))?;
    let platform = match reg.platform.as_str() {
        "apns" => Platform::Apns,
        "fcm" => Platform::Fcm,
        other => {
            return Err(bad(
                "bad_platform",
                format!("platform {other:?} is not \"apns\" or \"fcm\""),
            ))
        }
    };
    let t = &reg.token;
    if t.is_empty() || t.len() > MAX_TOKEN_LEN {
        return Err(bad(
            "bad_token",
            format!("token must be 1..={MAX_TOKEN_LEN} characters"),
        ));
    }
    let ok = match platform {
        Platform::Apns => t.len().is_multiple_of(2) && t.bytes().all(|b| b.is_ascii_hexdigit()),
        Platform::Fcm => t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b)),
    };
    if !ok {
        return Err(bad(
            "bad_token",
            match platform {
                Platform::Apns => "an APNs token is an even number of hex digits",
                Platform::Fcm => "an FCM token has only letters, digits and -_:.",
            },
        ));
    }
    if let Some(a) = &reg.app_id {
        let ok = !a.is_empty()
            && a.len() <= MAX_APP_ID_LEN
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(bad(
                "bad_app_id",
                format!("app_id must be 1..={MAX_APP_ID_LEN} of letters, digits and -_."),
            ));
        }
    }
    if let Some(l) = &reg.locale {
        let ok = !l.is_empty()
            && l.len() <= MAX_LOCALE_LEN
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad(
                "bad_locale",
                "locale must be a BCP 47 tag (letters, digits, - and _)",
            ));
        }
    }
    if reg.muted.len() > MAX_DEVICE_CHANNELS {
        return Err(bad(
            "bad_muted",
            format!("at most {MAX_DEVICE_CHANNELS} muted channels"),
        ));
    }
    let mut muted = Vec::with_capacity(reg.muted.len());
    for m in &reg.muted {
        let ch = pushable(m).ok_or_else(|| {
            bad(
                "bad_muted",
                format!("{m:?} is not a chat:, order: or vendor: channel"),
            )
        })?;
        muted.push(ch.to_string());
    }
    Ok(Device {
        device_id: reg.device_id,
        user: claims.sub.clone(),
        platform,
        token: reg.token,
        app_id: reg.app_id,
        locale: reg.locale,
        muted,
        channels: pushable_channels(claims),
        registered_ms: now_ms,
    })
}

/// A channel pushes can come for (`chat:`, `order:`, `vendor:`) with a
/// valid id.
fn pushable(name: &str) -> Option<Channel> {
    Channel::from_name(name).filter(|c| {
        matches!(
            c.kind,
            ChannelKind::Chat | ChannelKind::Order | ChannelKind::Vendor
        ) && validate_id("channel id", &c.id).is_ok()
    })
}

/// The channels of a token that pushes come for: its chat rooms and
/// orders, and a vendor's own notification stream (`vendor:{sub}`), at
/// most [`MAX_DEVICE_CHANNELS`].
pub fn pushable_channels(claims: &Claims) -> Vec<String> {
    let own = (claims.role == Role::Vendor).then(|| Channel::vendor(&claims.sub));
    let mut out: Vec<String> = own
        .into_iter()
        .chain(claims.channels.iter().flatten().filter_map(|c| pushable(c)))
        .map(|c| c.to_string())
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_DEVICE_CHANNELS);
    out
}

/// `POST /v1/devices`
pub async fn post_device(
    State(state): State<AppState>,
    Authed(claims): Authed,
    body: Result<Json<DeviceRegistration>, JsonRejection>,
) -> Result<Json<DeviceRegistered>, AppError> {
    let Json(reg) = body.map_err(|e| bad("bad_json", e.body_text()))?;
    let device = validate(&claims, reg, crate::now_ms())?;
    let max = state.push.config().max_devices_per_user;
    match state.push.devices.register(&device, max).await? {
        Registered::Stored => Ok(Json(DeviceRegistered {
            device_id: device.device_id,
            channels: device.channels,
        })),
        Registered::Full => Err(AppError::Conflict(format!(
            "at most {max} devices per user; delete one first"
        ))),
    }
}

/// `DELETE /v1/devices/{device_id}`
pub async fn delete_device(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    Authed(claims): Authed,
) -> Result<StatusCode, AppError> {
    validate_id("device_id", &device_id).map_err(|e| bad("bad_id", e.to_string()))?;
    if state
        .push
        .devices
        .unregister(&claims.sub, &device_id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound(format!("no device {device_id}")))
    }
}
