//! A buyer app in a page: watch the courier move and chat with the vendor.
//!
//! ```sh
//! cargo run -p waypost-server -- serve --dev &
//! TOKEN=$(cargo run -q -p waypost-server -- token --dev --sub buyer-1 --role buyer \
//!         --channels tracking:d-17,chat:order-42)
//! WAYPOST_TOKEN=$TOKEN cargo run -p waypost-sdk --example buyer
//! ```
//!
//! Run the driver example alongside to see the courier move; type lines to
//! chat (they are kept in the outbox while the server is unreachable).

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use waypost_sdk::buyer::{
    BuyerClient, BuyerConfig, BuyerListener, ChatEntry, ConnectionState, LocationUpdate,
    PresenceUpdate, TypingUpdate,
};
use waypost_sdk::StaticToken;

/// Prints what the SDK tells the app; a real app posts these to its UI
/// thread (map marker, chat list, "typing…", connection banner).
struct Ui;

impl BuyerListener for Ui {
    fn on_connection_state(&self, state: ConnectionState) {
        println!("[connection] {state:?}");
    }
    fn on_location(&self, u: LocationUpdate) {
        println!(
            "[courier] {} at {:.5},{:.5} (fix {})",
            u.driver_id, u.lat, u.lon, u.seq
        );
    }
    fn on_message(&self, m: ChatEntry) {
        println!("[chat #{}] {}: {}", m.seq.unwrap_or(0), m.sender, m.body);
    }
    fn on_outgoing(&self, m: ChatEntry) {
        println!("[me] {:?}: {}", m.status, m.body);
    }
    fn on_presence(&self, p: PresenceUpdate) {
        println!(
            "[presence] {} is {}",
            p.user,
            if p.online { "online" } else { "offline" }
        );
    }
    fn on_typing(&self, t: TypingUpdate) {
        println!("[typing] {}…", t.user);
    }
    fn on_error(&self, reference: String, code: String, message: String) {
        println!("[refused] {reference}: {code} ({message})");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("WAYPOST_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = std::env::var("WAYPOST_TOKEN").map_err(|_| "set WAYPOST_TOKEN (see the docs)")?;
    let db = std::env::temp_dir().join("waypost-example-buyer.db");

    let mut config = BuyerConfig::new(url, "buyer-1");
    config.db_path = Some(db.to_string_lossy().into_owned());
    let buyer = BuyerClient::start(config, Arc::new(Ui), Arc::new(StaticToken(token)))?;
    buyer.track_driver("d-17".into())?;
    buyer.join_chat("order-42".into())?;

    // History renders from the local store at once, even offline.
    for m in buyer.messages("order-42".into(), 20)? {
        println!(
            "[history #{}] {}: {} ({:?})",
            m.seq.unwrap_or(0),
            m.sender,
            m.body,
            m.status
        );
    }

    println!("type a message and press enter; ctrl-d quits");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if !line.trim().is_empty() {
            buyer.send_message("order-42".into(), line)?;
        }
    }
    buyer.shutdown().await;
    Ok(())
}
