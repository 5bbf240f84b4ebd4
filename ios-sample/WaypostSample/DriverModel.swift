import CoreLocation
import Foundation

/// The driver side: a `CLLocationManager` delegate that feeds every fix
/// into the SDK's `Driver` (SQLite buffer, background uploads), and applies
/// the SDK's `SamplingRequest` to the location manager whenever it changes
/// (somebody started watching, the phone stopped, the battery is low).
///
/// Threads: CLLocationManager calls back on the main thread; `record` is a
/// short SQLite commit, done on a serial queue. Driver events arrive on an
/// SDK thread ("waypost-rt") or on the recording queue; UI state is
/// published on the main actor.
final class DriverModel: NSObject, ObservableObject, CLLocationManagerDelegate, DriverListener, @unchecked Sendable {
    @Published private(set) var status = "not driving"
    @Published private(set) var events: [String] = []
    @Published private(set) var isDriving = false

    private let platform: PlatformMonitor
    private let manager = CLLocationManager()
    private let recordQueue = DispatchQueue(label: "waypost.record")
    private var driver: Driver?
    private var platformHandler: UUID?

    init(platform: PlatformMonitor) {
        self.platform = platform
        super.init()
        manager.delegate = self
        manager.activityType = .automotiveNavigation
        manager.pausesLocationUpdatesAutomatically = false
    }

    func start(settings: Settings) {
        guard driver == nil else { return }
        let config = DriverConfig(
            baseUrl: settings.url,
            driverId: settings.userId,
            deviceId: settings.deviceId,
            bufferPath: Self.bufferURL.path
        )
        do {
            // A real app passes a TokenProvider that refreshes from its backend.
            let driver = try Driver(config: config, tokens: staticToken(token: settings.token),
                                    listener: self, platform: platform)
            try driver.start()
            self.driver = driver
            platformHandler = platform.addChangeHandler { [weak driver] in driver?.environmentChanged() }
            apply(driver.desiredSampling())
            manager.requestAlwaysAuthorization()
            manager.allowsBackgroundLocationUpdates = true // needs UIBackgroundModes "location"
            manager.showsBackgroundLocationIndicator = true
            manager.startUpdatingLocation()
            isDriving = true
            status = "driving"
        } catch {
            status = "cannot start: \(error)"
        }
    }

    func stop() {
        manager.stopUpdatingLocation()
        if let id = platformHandler { platform.removeChangeHandler(id) }
        guard let driver else { return }
        self.driver = nil
        isDriving = false
        Task {
            // Unsent fixes stay in the buffer and go out at the next start.
            try? await driver.shutdown()
            await MainActor.run { self.status = "stopped" }
        }
    }

    // MARK: CLLocationManagerDelegate

    func locationManager(_ manager: CLLocationManager, didUpdateLocations locations: [CLLocation]) {
        let fixes = locations.map { l in
            Location(
                tsMs: Int64(l.timestamp.timeIntervalSince1970 * 1000),
                lat: l.coordinate.latitude,
                lon: l.coordinate.longitude,
                accuracyM: l.horizontalAccuracy >= 0 ? l.horizontalAccuracy : nil,
                speedMps: l.speed >= 0 ? l.speed : nil,
                headingDeg: l.course >= 0 ? l.course : nil,
                altitudeM: l.verticalAccuracy >= 0 ? l.altitude : nil
            )
        }
        guard let driver else { return }
        recordQueue.async { [weak self] in
            do {
                let outcomes = try driver.recordMany(locations: fixes)
                let stats = try driver.stats()
                let recorded = outcomes.filter { if case .recorded = $0 { return true } else { return false } }.count
                DispatchQueue.main.async {
                    self?.status = "recorded \(recorded)/\(fixes.count) · pending \(stats.pending) · uploaded \(stats.ackedTotal)"
                        + (stats.watched ? " · watched" : "")
                }
            } catch {
                DispatchQueue.main.async { self?.status = "recording failed: \(error)" }
            }
        }
    }

    func locationManager(_ manager: CLLocationManager, didFailWithError error: Error) {
        log("location error: \(error.localizedDescription)")
    }

    // MARK: DriverListener (SDK thread)

    func onEvent(event: DriverEvent) {
        switch event {
        case .samplingChanged(let sampling):
            DispatchQueue.main.async { self.apply(sampling) }
            log("sampling: \(sampling.accuracy), every \(sampling.intervalMs) ms")
        case .watchedChanged(let watched):
            log(watched ? "a customer is watching" : "nobody watches")
        case .uploaded(let fixes, let highSeq, _):
            log("uploaded \(fixes) fixes (up to #\(highSeq))")
        case .uploadFailed(let message, let retryInMs):
            log("upload failed: \(message); retry in \(retryInMs) ms")
        case .authFailed(let message):
            log("sign-in needed: \(message)")
        case .quarantined(let seq, let reason):
            log("server refused fix #\(seq): \(reason)")
        case .evicted(let count):
            log("buffer full: dropped \(count) old fixes")
        case .bufferRecreated:
            log("buffer was corrupt and was reset")
        }
    }

    /// The SDK's wishes, in CoreLocation terms.
    private func apply(_ s: SamplingRequest) {
        switch s.accuracy {
        case .high: manager.desiredAccuracy = kCLLocationAccuracyBest
        case .balanced: manager.desiredAccuracy = kCLLocationAccuracyNearestTenMeters
        case .low: manager.desiredAccuracy = kCLLocationAccuracyKilometer
        }
        manager.distanceFilter = s.distanceFilterM
    }

    private func log(_ line: String) {
        DispatchQueue.main.async {
            self.events.insert(line, at: 0)
            if self.events.count > 50 { self.events.removeLast() }
        }
    }

    private static var bufferURL: URL {
        let dir = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask)[0]
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent("waypost-buffer.db")
    }
}
