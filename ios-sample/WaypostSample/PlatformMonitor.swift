import CoreLocation
import Foundation
import Network
import UIKit

/// Feeds the app's one `PlatformState` (created here, once per process)
/// from the system: network (`NWPathMonitor`), battery and Low Power Mode
/// (`UIDevice`, `ProcessInfo`), foreground/background (`UIApplication`
/// notifications) and the location authorization and accuracy (from the
/// `CLLocationManager` delegate, through `locationAuthorizationChanged`).
///
/// Every `Driver` and `BuyerClient` opened with `state` follows it by
/// itself: the driver re-plans sampling, uploads as soon as the network is
/// back and updates its health; the buyer reconnects. The setters are cheap
/// and never block; they may be called from any thread.
///
/// Motion activity (`CMMotionActivityManager` → `setActivity`) is left out
/// of the sample: it needs `NSMotionUsageDescription` and another prompt.
final class PlatformMonitor: @unchecked Sendable {
    let state = PlatformState()
    private let pathMonitor = NWPathMonitor()
    private var observers: [NSObjectProtocol] = []

    init() {
        pathMonitor.pathUpdateHandler = { [state] path in
            let network: NetworkType
            if path.status != .satisfied {
                network = .offline
            } else if path.usesInterfaceType(.cellular) && !path.usesInterfaceType(.wifi) {
                network = .cellular
            } else {
                network = .wifi
            }
            _ = state.setNetwork(network: network)
        }
        pathMonitor.start(queue: DispatchQueue(label: "waypost.path"))

        DispatchQueue.main.async {
            UIDevice.current.isBatteryMonitoringEnabled = true
            self.readBattery()
            _ = self.state.setAppState(appState: UIApplication.shared.applicationState == .background ? .background : .foreground)
        }
        let center = NotificationCenter.default
        for name in [UIDevice.batteryLevelDidChangeNotification,
                     UIDevice.batteryStateDidChangeNotification,
                     Notification.Name.NSProcessInfoPowerStateDidChange] {
            observers.append(center.addObserver(forName: name, object: nil, queue: .main) { [weak self] _ in
                self?.readBattery()
            })
        }
        observers.append(center.addObserver(forName: UIApplication.didEnterBackgroundNotification, object: nil, queue: .main) { [state] _ in
            _ = state.setAppState(appState: .background)
        })
        observers.append(center.addObserver(forName: UIApplication.willEnterForegroundNotification, object: nil, queue: .main) { [state] _ in
            _ = state.setAppState(appState: .foreground)
        })
    }

    deinit {
        pathMonitor.cancel()
        observers.forEach { NotificationCenter.default.removeObserver($0) }
    }

    /// From `locationManagerDidChangeAuthorization`: the permission and
    /// Precise Location (`accuracyAuthorization`). With reduced accuracy the
    /// SDK keeps the 1–5 km fixes, marked coarse, and samples slowly.
    func locationAuthorizationChanged(_ status: CLAuthorizationStatus, _ accuracy: CLAccuracyAuthorization) {
        let permission: LocationPermission
        switch status {
        case .authorizedAlways: permission = .always
        case .authorizedWhenInUse: permission = .whenInUse
        case .denied, .restricted: permission = .denied
        case .notDetermined: permission = .notDetermined
        @unknown default: permission = .notDetermined
        }
        _ = state.setPermission(permission: permission)
        _ = state.setAccuracy(accuracy: accuracy == .reducedAccuracy ? .reduced : .precise)
    }

    private func readBattery() {
        let device = UIDevice.current
        let level = device.batteryLevel < 0 ? 1.0 : Double(device.batteryLevel) // -1: unknown (simulator)
        let charging = device.batteryState == .charging || device.batteryState == .full
        _ = state.setBattery(battery: BatteryState(level: level, charging: charging,
                                               lowPowerMode: ProcessInfo.processInfo.isLowPowerModeEnabled))
    }
}
