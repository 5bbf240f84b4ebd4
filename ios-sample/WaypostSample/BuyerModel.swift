import Foundation

/// The buyer side: tracks one courier and chats in one order room. SDK
/// callbacks arrive on an SDK thread ("waypost-rt"), one at a time and in
/// order; every published change hops to the main actor. Opening the client,
/// reading the stored chat and queueing a message are `async` SDK calls.
final class BuyerModel: ObservableObject, BuyerListener, @unchecked Sendable {
    @Published private(set) var connection = "connecting…"
    @Published private(set) var tracking = "waiting for the courier's position…"
    @Published private(set) var messages: [ChatEntry] = []
    @Published private(set) var typing: String?
    @Published private(set) var lastError: String?
    /// The courier's path through the last dead zone (draw it as a line), oldest first.
    @Published private(set) var deadZonePath: [LocationUpdate] = []
    /// "Courier offline since …" / "Courier back after 45 s (offline)".
    @Published private(set) var courierStatus: String?

    let me: String
    let room: String
    private let driverId: String
    private var client: BuyerClient?
    /// Updates flow while these live; dropping them ends tracking / leaves the room.
    private var subscriptions: [Subscription] = []
    private var byClientId: [String: ChatEntry] = [:]
    private let platform: PlatformMonitor
    private var closed = false

    init(settings: Settings, platform: PlatformMonitor) {
        me = settings.userId
        room = settings.room
        driverId = settings.trackDriverId
        self.platform = platform
        let token = settings.token
        let baseUrl = settings.url
        let userId = settings.userId
        Task { @MainActor [weak self] in
            guard let self else { return }
            do {
                let config = BuyerConfig(
                    baseUrl: baseUrl,
                    userId: userId,
                    // The chat store and outbox survive restarts: messages written offline are sent later.
                    dbPath: try await Task.detached { try Self.dbURL().path }.value
                )
                let client = try await BuyerClient.open(config: config, listener: self,
                                                        tokens: staticToken(token: token), platform: platform.state)
                let subscriptions = [try client.trackDriver(driverId: self.driverId), try client.joinChat(room: self.room)]
                let stored = try await client.messages(room: self.room, limit: 200)
                self.opened(client, subscriptions: subscriptions, stored: stored)
            } catch {
                self.lastError = "\(error)"
            }
        }
    }

    @MainActor
    private func opened(_ client: BuyerClient, subscriptions: [Subscription], stored: [ChatEntry]) {
        guard !closed else { // the screen went away while opening
            subscriptions.forEach { $0.cancel() }
            Task { try? await client.shutdown() }
            return
        }
        self.client = client
        self.subscriptions = subscriptions
        for m in stored where byClientId[m.clientId]?.seq == nil { byClientId[m.clientId] = m }
        messages = sorted()
        // The client follows the PlatformState (offline → waits, back → reconnects) by itself.
    }

    /// Queues a message (works offline; SQLite outbox); the pending entry shows at once.
    @MainActor
    func send(_ body: String) {
        guard let client else { return }
        let room = self.room
        Task { [weak self] in
            do {
                let entry = try await client.sendMessage(room: room, body: body)
                self?.onOutgoing(message: entry)
            } catch {
                await MainActor.run { self?.lastError = "\(error)" }
            }
        }
    }

    @MainActor
    func userIsTyping() { try? client?.sendTyping(room: room) }

    @MainActor
    func close() {
        closed = true
        subscriptions.forEach { $0.cancel() }
        subscriptions = []
        guard let client else { return }
        self.client = nil
        Task { try? await client.shutdown() }
    }

    // MARK: BuyerListener (SDK thread)

    func onConnectionState(state: ConnectionState) {
        let text: String
        switch state {
        case .connecting(let attempt): text = attempt <= 1 ? "connecting…" : "connecting (attempt \(attempt))…"
        case .connected: text = "live"
        case .backingOff(_, let retryInMs): text = "reconnecting in \((retryInMs + 999) / 1000) s"
        case .offline: text = "offline: waiting for the network"
        case .closed(let reason):
            switch reason {
            case .shutdown: text = "closed"
            case .unauthorized(let message): text = "signed out: \(message)"
            case .refused(let code, let message): text = "refused (\(code)): \(message)"
            }
        }
        Task { @MainActor in self.connection = text }
    }

    func onLocation(update: LocationUpdate) {
        guard update.driverId == driverId else { return }
        var parts = [String(format: "Courier at %.5f, %.5f", update.lat, update.lon)]
        if let a = update.accuracyM { parts.append(String(format: "±%.0f m", a)) }
        if let s = update.speedMps { parts.append(String(format: "%.0f km/h", s * 3.6)) }
        let text = parts.joined(separator: " · ")
        Task { @MainActor in self.tracking = text }
    }

    func onMessage(message: ChatEntry) {
        guard message.room == room else { return }
        Task { @MainActor in
            self.byClientId[message.clientId] = message
            self.messages = self.sorted()
        }
    }

    func onOutgoing(message: ChatEntry) {
        guard message.room == room else { return }
        Task { @MainActor in
            // Never downgrade an acknowledged entry back to pending.
            if self.byClientId[message.clientId]?.seq == nil { self.byClientId[message.clientId] = message }
            self.messages = self.sorted()
        }
    }

    func onTrail(trail: TrailUpdate) {
        guard trail.driverId == driverId else { return }
        let path = trail.fixes
        Task { @MainActor in self.deadZonePath = path }
    }

    func onDriverStatus(status: DriverStatusUpdate) {
        guard status.driverId == driverId else { return }
        let text: String
        if status.online {
            let why = status.reason.map { " (\($0))" } ?? ""
            text = "Courier back after \((status.darkMs ?? 0) / 1000) s\(why)"
        } else {
            let since = Date(timeIntervalSince1970: Double(status.lastSeenMs) / 1000)
            text = "Courier offline since \(since.formatted(date: .omitted, time: .standard))"
        }
        Task { @MainActor in self.courierStatus = text }
    }

    func onPresence(update: PresenceUpdate) {}

    func onTyping(update: TypingUpdate) {
        guard update.room == room, update.user != me else { return }
        Task { @MainActor in
            self.typing = "\(update.user) is typing…"
            try? await Task.sleep(nanoseconds: 3_000_000_000)
            self.typing = nil
        }
    }

    func onError(reference: String, code: String, message: String) {
        Task { @MainActor in self.lastError = "\(code): \(message) (\(reference))" }
    }

    /// Stored messages by seq, then own pending/failed ones by time.
    private func sorted() -> [ChatEntry] {
        byClientId.values.sorted { a, b in
            switch (a.seq, b.seq) {
            case let (x?, y?): return x < y
            case (.some, nil): return true
            case (nil, .some): return false
            case (nil, nil): return a.tsMs < b.tsMs
            }
        }
    }

    private static func dbURL() throws -> URL {
        let dir = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask,
                                              appropriateFor: nil, create: true)
        return dir.appendingPathComponent("waypost-chat.db")
    }
}
