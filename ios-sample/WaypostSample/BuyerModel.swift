import Foundation

/// The buyer side: tracks one courier and chats in one order room by
/// iterating the SDK's AsyncStreams (Waypost's `driverUpdates`,
/// `chatEvents`, `connectionStates`); each loop runs in a `Task` on the main
/// actor, and cancelling the tasks (close) ends the subscriptions. Opening
/// the client, reading the stored chat and queueing a message are `async`
/// SDK calls.
@MainActor
final class BuyerModel: ObservableObject {
    @Published private(set) var connection = "connecting…"
    @Published private(set) var tracking = "waiting for the courier's position…"
    @Published private(set) var messages: [ChatEntry] = []
    @Published private(set) var typing: String?
    @Published private(set) var lastError: String?
    /// The courier's path through the last dead zone (draw it as a line), oldest first.
    @Published private(set) var deadZonePath: [LocationUpdate] = []
    /// "Courier offline since …" / "Courier back after 45 s (offline)".
    @Published private(set) var courierStatus: String?
    /// Highest seq each other participant has read (read receipts).
    @Published private(set) var readBy: [String: UInt64] = [:]

    let me: String
    let room: String
    private let driverId: String
    private var client: BuyerClient?
    /// The stream loops; cancelling them ends tracking / leaves the room.
    private var tasks: [Task<Void, Never>] = []
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
        Task { [weak self] in
            do {
                let config = BuyerConfig(
                    baseUrl: baseUrl,
                    userId: userId,
                    // The chat store and outbox survive restarts: messages written offline are sent later.
                    dbPath: try await Task.detached { try BuyerModel.dbURL().path }.value
                )
                // The client-wide listener only reports refused messages; it holds the model weakly,
                // so the client does not keep the model (nor itself) alive.
                let client = try await BuyerClient.open(config: config, listener: ErrorForwarder(self),
                                                        tokens: staticToken(token: token), platform: platform.state)
                guard let self else {
                    try? await client.shutdown()
                    return
                }
                let stored = try await client.messages(room: self.room, limit: 200)
                self.opened(client, stored: stored)
            } catch {
                self?.lastError = "\(error)"
            }
        }
    }

    private func opened(_ client: BuyerClient, stored: [ChatEntry]) {
        guard !closed else { // the screen went away while opening
            Task { try? await client.shutdown() }
            return
        }
        self.client = client
        // Push: register the APNs token for this buyer, and sync pushes
        // through this client while it is open.
        Task { await PushCoordinator.shared.buyerOpened(self) }
        for m in stored where byClientId[m.clientId]?.seq == nil { byClientId[m.clientId] = m }
        messages = sorted()
        // The client follows the PlatformState (offline → waits, back → reconnects) by itself.
        let driverId = self.driverId
        let room = self.room
        tasks = [
            Task { [weak self] in
                for await state in client.connectionStates() { self?.show(state) }
            },
            Task { [weak self] in
                // Not newest-only: a dead zone's trail comes before the position after it.
                do {
                    for try await update in client.driverUpdates(driverId) { self?.handle(update) }
                } catch {
                    self?.lastError = "tracking: \(error)"
                }
            },
            Task { [weak self] in
                do {
                    for try await event in client.chatEvents(room) { self?.handle(event) }
                } catch {
                    self?.lastError = "chat: \(error)"
                }
            },
        ]
    }

    /// Queues a message (works offline; SQLite outbox); the pending entry shows at once.
    func send(_ body: String) {
        guard let client else { return }
        let room = self.room
        Task { [weak self] in
            do {
                let entry = try await client.sendMessage(room: room, body: body)
                self?.outgoing(entry)
            } catch {
                self?.lastError = "\(error)"
            }
        }
    }

    /// The open client, for `PushCoordinator` (nil before open and after close).
    var openClient: BuyerClient? { client }

    func userIsTyping() { try? client?.sendTyping(room: room) }

    func close() {
        closed = true
        tasks.forEach { $0.cancel() }
        tasks = []
        guard let client else { return }
        self.client = nil
        Task { try? await client.shutdown() }
    }

    private func show(_ state: ConnectionState) {
        switch state {
        case .connecting(let attempt): connection = attempt <= 1 ? "connecting…" : "connecting (attempt \(attempt))…"
        case .connected: connection = "live"
        case .backingOff(_, let retryInMs): connection = "reconnecting in \((retryInMs + 999) / 1000) s"
        case .offline: connection = "offline: waiting for the network"
        case .closed(let reason):
            switch reason {
            case .shutdown: connection = "closed"
            case .unauthorized(let message): connection = "signed out: \(message)"
            case .refused(let code, let message): connection = "refused (\(code)): \(message)"
            }
        }
    }

    private func show(_ update: LocationUpdate) {
        var parts = [String(format: "Courier at %.5f, %.5f", update.lat, update.lon)]
        if let a = update.accuracyM { parts.append(String(format: "±%.0f m", a)) }
        if let s = update.speedMps { parts.append(String(format: "%.0f km/h", s * 3.6)) }
        tracking = parts.joined(separator: " · ")
    }

    private func handle(_ update: DriverUpdate) {
        switch update {
        case .location(let location):
            show(location)
        case .trail(let trail):
            deadZonePath = trail.fixes
        case .status(let status):
            if status.online {
                let why = status.reason.map { " (\($0))" } ?? ""
                courierStatus = "Courier back after \((status.darkMs ?? 0) / 1000) s\(why)"
            } else {
                let since = Date(timeIntervalSince1970: Double(status.lastSeenMs) / 1000)
                courierStatus = "Courier offline since \(since.formatted(date: .omitted, time: .standard))"
            }
        }
    }

    private func handle(_ event: ChatEvent) {
        switch event {
        case .message(let entry):
            byClientId[entry.clientId] = entry
            messages = sorted()
        case .outgoing(let entry):
            outgoing(entry)
        case .presence:
            break
        case .typing(let update):
            guard update.user != me else { return }
            typing = "\(update.user) is typing…"
            Task { [weak self] in
                try? await Task.sleep(nanoseconds: 3_000_000_000)
                self?.typing = nil
            }
        case .receipt(let update):
            if update.read, update.user != me { readBy[update.user] = max(readBy[update.user] ?? 0, update.seq) }
        case .refused(let reference, let code, let message):
            lastError = "\(code): \(message) (\(reference))"
        }
    }

    private func outgoing(_ entry: ChatEntry) {
        // Never downgrade an acknowledged entry back to pending.
        if byClientId[entry.clientId]?.seq == nil { byClientId[entry.clientId] = entry }
        messages = sorted()
    }

    fileprivate func report(_ text: String) { lastError = text }

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

    /// The chat store's file (also opened by `PushCoordinator` when a push
    /// wakes the app with no buyer screen open).
    nonisolated static func dbURL() throws -> URL {
        let dir = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask,
                                              appropriateFor: nil, create: true)
        return dir.appendingPathComponent("waypost-chat.db")
    }
}

/// The client-wide listener: the streams carry everything else; this one
/// reports refused messages. Holds the model weakly (no retain cycle through
/// the SDK).
private final class ErrorForwarder: BuyerListener, @unchecked Sendable {
    private weak var model: BuyerModel?
    init(_ model: BuyerModel?) { self.model = model }
    func onConnectionState(state: ConnectionState) {}
    func onLocation(update: LocationUpdate) {}
    func onMessage(message: ChatEntry) {}
    func onOutgoing(message: ChatEntry) {}
    func onPresence(update: PresenceUpdate) {}
    func onTyping(update: TypingUpdate) {}
    func onTrail(trail: TrailUpdate) {}
    func onDriverStatus(status: DriverStatusUpdate) {}
    func onReceipt(update: ReceiptUpdate) {}
    func onError(reference: String, code: String, message: String) {
        Task { @MainActor [weak model] in model?.report("\(code): \(message) (\(reference))") }
    }
}
