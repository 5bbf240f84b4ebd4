import os
import SwiftUI

/// Entry point: one platform monitor for the whole app, a driver screen and
/// a buyer screen.
@main
struct WaypostSampleApp: App {
    /// APNs: registerForRemoteNotifications, the device token → registerPushToken,
    /// background pushes → handlePush (PushDelegate.swift).
    @UIApplicationDelegateAdaptor(PushDelegate.self) private var pushDelegate
    @StateObject private var settings = Settings()
    private let platform = PlatformMonitor()

    init() {
        // SDK logs into the unified log (Console.app, subsystem io.waypost.sdk).
        _ = try? initLogging(filter: "info,waypost_sdk=debug", sink: OSLogSink())
    }

    var body: some Scene {
        WindowGroup {
            TabView {
                DriverView(model: DriverModel(platform: platform))
                    .tabItem { Label("Drive", systemImage: "car") }
                BuyerView(platform: platform)
                    .tabItem { Label("Order", systemImage: "bag") }
            }
            .environmentObject(settings)
        }
    }
}

/// Server, ids and token, kept in UserDefaults. Mint a development token
/// with `waypost token --dev --sub d-1 --role driver`.
final class Settings: ObservableObject {
    private static let defaults = UserDefaults.standard

    @Published var url = defaults.string(forKey: "url") ?? "http://localhost:8080" { didSet { save("url", url) } }
    @Published var userId = defaults.string(forKey: "userId") ?? "" { didSet { save("userId", userId) } }
    @Published var token = defaults.string(forKey: "token") ?? "" { didSet { save("token", token) } }
    @Published var trackDriverId = defaults.string(forKey: "trackDriverId") ?? "" { didSet { save("trackDriverId", trackDriverId) } }
    @Published var room = defaults.string(forKey: "room") ?? "" { didSet { save("room", room) } }

    /// Stable per install: the SDK numbers fixes per device.
    var deviceId: String {
        if let id = Self.defaults.string(forKey: "deviceId") { return id }
        let id = "ios-" + UUID().uuidString.prefix(12).lowercased()
        Self.defaults.set(id, forKey: "deviceId")
        return id
    }

    private func save(_ key: String, _ value: String) { Self.defaults.set(value, forKey: key) }
}

/// Forwards SDK log lines to `os_log`.
final class OSLogSink: LogSink, @unchecked Sendable {
    private let logger = Logger(subsystem: "io.waypost.sdk", category: "sdk")

    func log(level: LogLevel, target: String, message: String) {
        let type: OSLogType
        switch level {
        case .error: type = .error
        case .warn: type = .default
        case .info: type = .info
        case .debug, .trace: type = .debug
        }
        logger.log(level: type, "\(target, privacy: .public): \(message, privacy: .public)")
    }
}
