import Foundation

/// The buyer side: tracks one courier and chats in one order room. SDK
/// callbacks arrive on an SDK thread ("waypost-rt"), one at a time and in
/// order; every published change hops to the main actor.
final class BuyerModel: ObservableObject, BuyerListener, @unchecked Sendable {
    @Published private(set) var connection = "connecting…"
    @Published private(set) var tracking = "waiting for the courier's position…"
    @Published private(set) var messages: [ChatEntry] = []
    @Published private(set) var typing: String?
    @Published private(set) var lastError: String?

    let me: String
    let room: String
    private let driverId: String
    private var client: BuyerClient?
    /// Updates flow while these live; dropping them ends tracking / leaves the room.
    private var subscriptions: [Subscription] = []
    private var byClientId: [String: ChatEntry] = [:]
    private var platformHandler: UUID?
    private let platform: PlatformMonitor

    init(settings: Settings, platform: PlatformMonitor) {
        me = settings.userId
        room = settings.room
        driverId = settings.trackDriverId
        self.platform = platform
        do {
            let config = BuyerConfig(
                baseUrl: settings.url,
                userId: settings.userId,
                // The chat store and outbox survive restarts: messages written offline are sent later.
                dbPath: Self.dbURL.path
            )
            let client = try BuyerClient(config: config, listener: self,
                                         tokens: staticToken(token: settings.token), platform: platform)
            self.client = client
            subscriptions = [try client.trackDriver(driverId: driverId), try client.joinChat(room: room)]
            for m in try client.messages(room: room, limit: 200) { byClientId[m.clientId] = m }
            messages = sorted()
            platformHandler = platform.addChangeHandler { [weak client] in try? client?.environmentChanged() }
        } catch {
            lastError = "\(error)"
        }
    }

    func send(_ body: String) {
        guard let client else { return }
        do {
            onOutgoing(message: try client.sendMessage(room: room, body: body))
        } catch {
            lastError = "\(error)"
        }
    }

    func userIsTyping() { try? client?.sendTyping(room: room) }

    func close() {
        if let id = platformHandler { platform.removeChangeHandler(id) }
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

    private static var dbURL: URL {
        let dir = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask)[0]
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent("waypost-chat.db")
    }
}
