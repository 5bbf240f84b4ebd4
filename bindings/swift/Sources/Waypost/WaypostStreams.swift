// AsyncStream extensions over the uniffi-generated Waypost API, the Swift
// counterpart of the Kotlin `waypost-ktx` Flows. Hand-written; compiled with
// the generated sources (Sources/Waypost/Generated) into the `Waypost` module.
//
// Every stream is cold: iterating opens its own core subscription
// (`trackDriver(driverId:listener:)`, `joinChat(room:listener:)`, ...) and
// ending the iteration (leaving the `for await` loop, cancelling the task)
// runs `onTermination`, which cancels the subscription: its listener is
// removed at once and the wire subscription ends when nothing else wants
// the channel. The SDK calls back on its own threads and only `yield`s, so a
// slow consumer never blocks the SDK.
//
// Buffer policy (per iteration):
//   - locations, connection state: newest only (`.bufferingNewest(1)`);
//   - chat events, order updates: up to `WaypostStreams.chatBuffer` /
//     `orderBuffer` wait; a consumer that falls further behind gets
//     `WaypostStreamError.overflow` (nothing dropped silently: reload
//     `messages(room:limit:)` and iterate again);
//   - driver events: the newest `WaypostStreams.eventBuffer`.
import Foundation

public enum WaypostStreams {
    public static let chatBuffer = 1_024
    public static let orderBuffer = 256
    public static let eventBuffer = 256
    public static let driverBuffer = 256
}

public enum WaypostStreamError: Error, Equatable {
    /// The server refused the subscription (`code`, e.g. "forbidden").
    case refused(reference: String, code: String, message: String)
    /// The consumer fell more than `capacity` items behind.
    case overflow(reference: String, capacity: Int)
}

/// What `orderUpdates(_:)` yields.
public enum OrderUpdate: Equatable {
    /// A timeline entry: once per seq, in order, from seq 1.
    case entry(OrderEntry)
    /// The assigned driver moved (while the order is active).
    case location(LocationUpdate)
    /// The driver's path through a dead zone (while the order is active).
    case trail(TrailUpdate)
    /// The driver went dark or came back (while the order is active).
    case status(DriverStatusUpdate)
}

/// What `driverUpdates(_:)` yields.
public enum DriverUpdate: Equatable {
    /// The driver moved (its newest known position first).
    case location(LocationUpdate)
    /// The driver's path through a dead zone, before the position after it.
    case trail(TrailUpdate)
    /// The driver went dark or came back.
    case status(DriverStatusUpdate)
}

/// Yields into a bounded throwing stream; finishes it with `overflow` when full.
private func yieldOrFail<T>(
    _ continuation: AsyncThrowingStream<T, Error>.Continuation,
    _ value: T,
    reference: String,
    capacity: Int
) {
    if case .dropped = continuation.yield(value) {
        continuation.finish(throwing: WaypostStreamError.overflow(reference: reference, capacity: capacity))
    }
}

private final class LocationForwarder: LocationListener, @unchecked Sendable {
    let continuation: AsyncThrowingStream<LocationUpdate, Error>.Continuation
    let reference: String
    init(_ continuation: AsyncThrowingStream<LocationUpdate, Error>.Continuation, reference: String) {
        self.continuation = continuation
        self.reference = reference
    }
    func onLocation(update: LocationUpdate) {
        continuation.yield(update)
    }
    func onRefused(code: String, message: String) {
        continuation.finish(throwing: WaypostStreamError.refused(reference: reference, code: code, message: message))
    }
    // Positions only: iterate `driverUpdates(_:)` for trails and status.
    func onTrail(trail: TrailUpdate) {}
    func onDriverStatus(status: DriverStatusUpdate) {}
}

private final class DriverUpdateForwarder: LocationListener, @unchecked Sendable {
    let continuation: AsyncThrowingStream<DriverUpdate, Error>.Continuation
    let reference: String
    init(_ continuation: AsyncThrowingStream<DriverUpdate, Error>.Continuation, reference: String) {
        self.continuation = continuation
        self.reference = reference
    }
    func onLocation(update: LocationUpdate) {
        yieldOrFail(continuation, .location(update), reference: reference, capacity: WaypostStreams.driverBuffer)
    }
    func onRefused(code: String, message: String) {
        continuation.finish(throwing: WaypostStreamError.refused(reference: reference, code: code, message: message))
    }
    func onTrail(trail: TrailUpdate) {
        yieldOrFail(continuation, .trail(trail), reference: reference, capacity: WaypostStreams.driverBuffer)
    }
    func onDriverStatus(status: DriverStatusUpdate) {
        yieldOrFail(continuation, .status(status), reference: reference, capacity: WaypostStreams.driverBuffer)
    }
}

private final class ChatForwarder: ChatListener, @unchecked Sendable {
    let continuation: AsyncThrowingStream<ChatEvent, Error>.Continuation
    let reference: String
    init(_ continuation: AsyncThrowingStream<ChatEvent, Error>.Continuation, reference: String) {
        self.continuation = continuation
        self.reference = reference
    }
    func onChatEvent(event: ChatEvent) {
        if case let .refused(ref, code, message) = event, ref == reference {
            continuation.finish(throwing: WaypostStreamError.refused(reference: ref, code: code, message: message))
        } else {
            yieldOrFail(continuation, event, reference: reference, capacity: WaypostStreams.chatBuffer)
        }
    }
}

private final class StateForwarder: ConnectionStateListener, @unchecked Sendable {
    let continuation: AsyncStream<ConnectionState>.Continuation
    init(_ continuation: AsyncStream<ConnectionState>.Continuation) {
        self.continuation = continuation
    }
    func onConnectionState(state: ConnectionState) {
        continuation.yield(state)
    }
}

private final class OrderForwarder: OrderListener, @unchecked Sendable {
    let continuation: AsyncThrowingStream<OrderUpdate, Error>.Continuation
    let reference: String
    init(_ continuation: AsyncThrowingStream<OrderUpdate, Error>.Continuation, reference: String) {
        self.continuation = continuation
        self.reference = reference
    }
    func onEntry(entry: OrderEntry) {
        yieldOrFail(continuation, .entry(entry), reference: reference, capacity: WaypostStreams.orderBuffer)
    }
    func onLocation(update: LocationUpdate) {
        yieldOrFail(continuation, .location(update), reference: reference, capacity: WaypostStreams.orderBuffer)
    }
    func onTrail(trail: TrailUpdate) {
        yieldOrFail(continuation, .trail(trail), reference: reference, capacity: WaypostStreams.orderBuffer)
    }
    func onDriverStatus(status: DriverStatusUpdate) {
        yieldOrFail(continuation, .status(status), reference: reference, capacity: WaypostStreams.orderBuffer)
    }
}

private final class HealthForwarder: HealthListener, @unchecked Sendable {
    let continuation: AsyncStream<DriverHealth>.Continuation
    init(_ continuation: AsyncStream<DriverHealth>.Continuation) {
        self.continuation = continuation
    }
    func onHealth(health: DriverHealth) {
        continuation.yield(health)
    }
}

private final class EventForwarder: DriverListener, @unchecked Sendable {
    let continuation: AsyncStream<DriverEvent>.Continuation
    init(_ continuation: AsyncStream<DriverEvent>.Continuation) {
        self.continuation = continuation
    }
    func onEvent(event: DriverEvent) {
        continuation.yield(event)
    }
}

public extension BuyerClient {
    /// One driver's positions: its newest known one first, then every newer
    /// fix, across reconnects. Throws `WaypostStreamError.refused` when the
    /// server refuses the subscription, `WaypostError` when the client is
    /// shut down.
    func driverLocations(_ driverId: String) -> AsyncThrowingStream<LocationUpdate, Error> {
        AsyncThrowingStream(bufferingPolicy: .bufferingNewest(1)) { continuation in
            do {
                let forwarder = LocationForwarder(continuation, reference: "tracking:\(driverId)")
                let subscription = try self.trackDriver(driverId: driverId, listener: forwarder)
                continuation.onTermination = { _ in subscription.cancel() }
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    /// One driver's positions, dead-zone trails and online/offline status,
    /// in the order the SDK reports them (up to
    /// `WaypostStreams.driverBuffer` wait, then `overflow`).
    func driverUpdates(_ driverId: String) -> AsyncThrowingStream<DriverUpdate, Error> {
        AsyncThrowingStream(bufferingPolicy: .bufferingOldest(WaypostStreams.driverBuffer)) { continuation in
            do {
                let forwarder = DriverUpdateForwarder(continuation, reference: "tracking:\(driverId)")
                let subscription = try self.trackDriver(driverId: driverId, listener: forwarder)
                continuation.onTermination = { _ in subscription.cancel() }
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    /// Everything that happens in one chat room (new messages once per seq
    /// and in order, own messages' status, presence, typing). Read the
    /// stored timeline with `messages(room:limit:)` first.
    func chatEvents(_ room: String) -> AsyncThrowingStream<ChatEvent, Error> {
        AsyncThrowingStream(bufferingPolicy: .bufferingOldest(WaypostStreams.chatBuffer)) { continuation in
            do {
                let forwarder = ChatForwarder(continuation, reference: "chat:\(room)")
                let subscription = try self.joinChat(room: room, listener: forwarder)
                continuation.onTermination = { _ in subscription.cancel() }
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    /// The messages entering one room's timeline (see `chatEvents(_:)`).
    func chatMessages(_ room: String) -> AsyncThrowingStream<ChatEntry, Error> {
        let events = chatEvents(room)
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    for try await event in events {
                        if case let .message(entry) = event {
                            continuation.yield(entry)
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// One room's receipts: a participant (this user's other devices
    /// included) delivered or read it up to a seq (see `chatEvents(_:)`).
    func chatReceipts(_ room: String) -> AsyncThrowingStream<ReceiptUpdate, Error> {
        let events = chatEvents(room)
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    for try await event in events {
                        if case let .receipt(update) = event {
                            continuation.yield(update)
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// One order's timeline and its driver's position. One iteration per
    /// order at a time: tracking an order again replaces the listener.
    func orderUpdates(_ orderId: String) -> AsyncThrowingStream<OrderUpdate, Error> {
        AsyncThrowingStream(bufferingPolicy: .bufferingOldest(WaypostStreams.orderBuffer)) { continuation in
            do {
                let forwarder = OrderForwarder(continuation, reference: "order:\(orderId)")
                let subscription = try self.trackOrder(orderId: orderId, listener: forwarder)
                continuation.onTermination = { _ in subscription.cancel() }
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    /// The connection state now, then every change (newest only). Ends
    /// at once when the client is shut down.
    func connectionStates() -> AsyncStream<ConnectionState> {
        AsyncStream(bufferingPolicy: .bufferingNewest(1)) { continuation in
            do {
                let subscription = try self.watchConnectionState(listener: StateForwarder(continuation))
                continuation.onTermination = { _ in subscription.cancel() }
            } catch {
                continuation.finish()
            }
        }
    }
}

public extension Driver {
    /// The driver's events from now on (upload results, sampling changes,
    /// evictions, ...), the newest `WaypostStreams.eventBuffer` kept. The
    /// first stream of a driver also gets, first, the events raised since
    /// `Driver.open` before it subscribed (`bufferRecreated`, an upload
    /// that finished first, ...; the newest 256).
    func events() -> AsyncStream<DriverEvent> {
        AsyncStream(bufferingPolicy: .bufferingNewest(WaypostStreams.eventBuffer)) { continuation in
            do {
                let subscription = try self.watchEvents(listener: EventForwarder(continuation))
                continuation.onTermination = { _ in subscription.cancel() }
            } catch {
                continuation.finish()
            }
        }
    }

    /// The health report now, then every change (newest only). Ending the
    /// iteration removes the listener; it does not keep the driver alive.
    func healthUpdates() -> AsyncStream<DriverHealth> {
        AsyncStream(bufferingPolicy: .bufferingNewest(1)) { continuation in
            do {
                let subscription = try self.addHealthListener(listener: HealthForwarder(continuation))
                continuation.onTermination = { _ in subscription.cancel() }
            } catch {
                continuation.finish()
            }
        }
    }
}
