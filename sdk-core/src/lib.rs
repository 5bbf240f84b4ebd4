//! Waypost client SDK core (driver and buyer sides). Filled in by the driver
//! and buyer SDK work; see README.md.

pub use waypost_protocol as protocol;
