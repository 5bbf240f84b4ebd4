import Foundation
import Network
import UIKit

/// Network (NWPathMonitor) and battery (UIDevice, low-power mode) for the
/// SDK. The SDK calls `network()`/`battery()` often from its own threads,
/// so they return cached values under a lock; observers push changes and
/// tell the registered SDK objects (`environmentChanged()`), so the driver
/// uploads and the buyer reconnects as soon as the network is back.
final class PlatformMonitor: PlatformInfo, @unchecked Sendable {
    private let lock = NSLock()
    private var currentNetwork: NetworkType = .wifi
    private var currentBattery = BatteryState(level: 1, charging: false, lowPowerMode: false)
    private var onChange: [UUID: () -> Void] = [:]
    private let pathMonitor = NWPathMonitor()

    init() {
        pathMonitor.pathUpdateHandler = { [weak self] path in
            let network: NetworkType
            if path.status != .satisfied {
                network = .offline
            } else if path.usesInterfaceType(.cellular) && !path.usesInterfaceType(.wifi) {
                network = .cellular
            } else {
                network = .wifi
            }
            self?.update { $0.currentNetwork = network }
        }
        pathMonitor.start(queue: DispatchQueue(label: "waypost.path"))

        DispatchQueue.main.async {
            UIDevice.current.isBatteryMonitoringEnabled = true
            self.readBattery()
        }
        let center = NotificationCenter.default
        for name in [UIDevice.batteryLevelDidChangeNotification,
                     UIDevice.batteryStateDidChangeNotification,
                     Notification.Name.NSProcessInfoPowerStateDidChange] {
            center.addObserver(forName: name, object: nil, queue: .main) { [weak self] _ in
                self?.readBattery()
            }
        }
    }

    deinit { pathMonitor.cancel() }

    // MARK: PlatformInfo (called by the SDK on its threads)

    func network() -> NetworkType { lock.withLock { currentNetwork } }
    func battery() -> BatteryState { lock.withLock { currentBattery } }

    // MARK: change notifications

    /// Calls `handler` after each change; keep the token to remove it.
    @discardableResult
    func addChangeHandler(_ handler: @escaping () -> Void) -> UUID {
        let id = UUID()
        lock.withLock { onChange[id] = handler }
        return id
    }

    func removeChangeHandler(_ id: UUID) {
        _ = lock.withLock { onChange.removeValue(forKey: id) }
    }

    private func readBattery() {
        let device = UIDevice.current
        let level = device.batteryLevel < 0 ? 1.0 : Double(device.batteryLevel) // -1: unknown (simulator)
        let charging = device.batteryState == .charging || device.batteryState == .full
        let battery = BatteryState(level: level, charging: charging,
                                   lowPowerMode: ProcessInfo.processInfo.isLowPowerModeEnabled)
        update { $0.currentBattery = battery }
    }

    private func update(_ change: (PlatformMonitor) -> Void) {
        let handlers: [() -> Void] = lock.withLock {
            change(self)
            return Array(onChange.values)
        }
        handlers.forEach { $0() }
    }
}
