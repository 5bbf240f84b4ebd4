import os
import UIKit
import UserNotifications
import Waypost

/// APNs for the buyer (issue 19): the server pushes what a backgrounded
/// buyer missed (chat messages, order milestones, vendor notifications) as a
/// visible, localised alert with `content-available: 1` and the resume data
/// under `waypost`; the SDK reads exactly that gap.
///
/// - At launch: asks for alert permission and calls
///   `registerForRemoteNotifications()`.
/// - `didRegisterForRemoteNotificationsWithDeviceToken`: the token (hex) goes
///   to the server through the SDK (`registerPushToken`), now if a buyer is
///   signed in, else when the buyer screen opens.
/// - `didReceiveRemoteNotification:fetchCompletionHandler:`: `handlePush`
///   within the ~30 s iOS gives a background fetch (stopped after
///   `PushCoordinator.syncBudget`), then the completion handler.
/// - A tapped notification (`userNotificationCenter(_:didReceive:)`) syncs
///   too, in case the background fetch was throttled.
///
/// Cannot be built on Linux CI (no Xcode): written against the generated
/// Swift API (`BuyerClient.registerPushToken(platform:token:)`,
/// `handlePush(payload:)`).
final class PushDelegate: NSObject, UIApplicationDelegate, UNUserNotificationCenterDelegate {
    private let log = Logger(subsystem: "io.waypost.sample", category: "push")

    func application(_ application: UIApplication,
                     didFinishLaunchingWithOptions launchOptions: [UIApplication.LaunchOptionsKey: Any]? = nil) -> Bool {
        let center = UNUserNotificationCenter.current()
        center.delegate = self
        center.requestAuthorization(options: [.alert, .sound, .badge]) { [log] granted, error in
            if let error { log.error("notification permission: \(error.localizedDescription, privacy: .public)") }
            log.info("alerts allowed: \(granted)")
        }
        // The device token comes whether or not alerts are allowed.
        application.registerForRemoteNotifications()
        return true
    }

    func application(_ application: UIApplication,
                     didRegisterForRemoteNotificationsWithDeviceToken deviceToken: Data) {
        let hex = deviceToken.map { String(format: "%02x", $0) }.joined()
        Task { await PushCoordinator.shared.tokenChanged(hex) }
    }

    func application(_ application: UIApplication,
                     didFailToRegisterForRemoteNotificationsWithError error: Error) {
        log.error("APNs registration failed: \(error.localizedDescription, privacy: .public)")
    }

    func application(_ application: UIApplication,
                     didReceiveRemoteNotification userInfo: [AnyHashable: Any],
                     fetchCompletionHandler completionHandler: @escaping (UIBackgroundFetchResult) -> Void) {
        guard let payload = PushCoordinator.payload(userInfo) else {
            completionHandler(.noData)
            return
        }
        Task {
            let result = await PushCoordinator.shared.sync(payload)
            completionHandler(result)
        }
    }

    /// Foreground: the socket already delivered what the alert announces.
    func userNotificationCenter(_ center: UNUserNotificationCenter,
                                willPresent notification: UNNotification) async -> UNNotificationPresentationOptions {
        []
    }

    /// The user tapped the alert: make sure the gap is read.
    func userNotificationCenter(_ center: UNUserNotificationCenter,
                                didReceive response: UNNotificationResponse) async {
        if let payload = PushCoordinator.payload(response.notification.request.content.userInfo) {
            _ = await PushCoordinator.shared.sync(payload)
        }
    }
}

/// Who registers the token and syncs pushes: the open buyer screen's client
/// when there is one (one client per SQLite store), else a short-lived one
/// on the same store with the saved settings.
@MainActor
final class PushCoordinator {
    static let shared = PushCoordinator()
    /// iOS gives a background fetch about 30 s; stop well before.
    static let syncBudget: Duration = .seconds(25)

    private let log = Logger(subsystem: "io.waypost.sample", category: "push")
    /// Set by `BuyerModel` while its client is open.
    weak var activeModel: BuyerModel?
    private var token: String? = UserDefaults.standard.string(forKey: "apnsToken")

    /// The APNs `userInfo` as the JSON `handlePush` takes (nil: not a Waypost push).
    nonisolated static func payload(_ userInfo: [AnyHashable: Any]) -> String? {
        guard userInfo["waypost"] != nil,
              JSONSerialization.isValidJSONObject(userInfo),
              let data = try? JSONSerialization.data(withJSONObject: userInfo) else { return nil }
        return String(data: data, encoding: .utf8)
    }

    /// A new device token: remembered, and registered now if a client can be had.
    func tokenChanged(_ hex: String) async {
        token = hex
        UserDefaults.standard.set(hex, forKey: "apnsToken")
        await registerIfPossible()
    }

    /// Called by `BuyerModel` once its client is open (a login).
    func buyerOpened(_ model: BuyerModel) async {
        activeModel = model
        await registerIfPossible()
    }

    private func registerIfPossible() async {
        guard let token else { return }
        do {
            let channels = try await withClient { client in
                try await client.registerPushToken(platform: .apns, token: token)
            }
            log.info("push registered for \(channels?.joined(separator: ",") ?? "nobody yet", privacy: .public)")
        } catch {
            log.error("push registration failed: \(String(describing: error), privacy: .public)")
        }
    }

    /// Reads what the push covers, within `syncBudget`.
    func sync(_ payload: String) async -> UIBackgroundFetchResult {
        do {
            let synced = try await withClient { client in
                try await withBudget(Self.syncBudget) { try await client.handlePush(payload: payload) }
            }
            guard let s = synced ?? nil else { return .failed }
            let fetched = s.messages.count + s.orderEntries.count + s.notifications.count
            log.info("push sync \(s.channel, privacy: .public): \(fetched) item(s), complete: \(s.complete)")
            return fetched > 0 ? .newData : .noData
        } catch {
            log.error("push sync failed: \(String(describing: error), privacy: .public)")
            return .failed
        }
    }

    private func withClient<T>(_ body: (BuyerClient) async throws -> T) async throws -> T? {
        if let client = activeModel?.openClient { return try await body(client) }
        let d = UserDefaults.standard
        guard let url = d.string(forKey: "url"), let userId = d.string(forKey: "userId"),
              !userId.isEmpty, let token = d.string(forKey: "token") else { return nil }
        let dbPath = try await Task.detached { try BuyerModel.dbURL().path }.value
        let client = try await BuyerClient.open(
            config: BuyerConfig(baseUrl: url, userId: userId, dbPath: dbPath),
            listener: SilentListener(), tokens: staticToken(token: token), platform: nil)
        defer { Task { try? await client.shutdown() } }
        return try await body(client)
    }
}

/// Runs `body`, giving up (nil) after `budget`.
private func withBudget<T: Sendable>(_ budget: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask { try await Task.sleep(for: budget); return nil }
        let first = try await group.next() ?? nil
        group.cancelAll()
        return first
    }
}

/// A listener for a client opened only to sync a push.
private final class SilentListener: BuyerListener, @unchecked Sendable {
    func onConnectionState(state: ConnectionState) {}
    func onLocation(update: LocationUpdate) {}
    func onMessage(message: ChatEntry) {}
    func onOutgoing(message: ChatEntry) {}
    func onPresence(update: PresenceUpdate) {}
    func onTyping(update: TypingUpdate) {}
    func onTrail(trail: TrailUpdate) {}
    func onDriverStatus(status: DriverStatusUpdate) {}
    func onReceipt(update: ReceiptUpdate) {}
    func onError(reference: String, code: String, message: String) {}
}
