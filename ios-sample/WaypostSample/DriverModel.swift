import CoreLocation
import Foundation

/// The driver side: a `CLLocationManager` delegate that feeds every fix into
/// the SDK's `Driver` (SQLite buffer, background uploads), and applies the
/// SDK's `SamplingRequest` to the location manager whenever it changes
/// (somebody started watching, the phone stopped, the battery is low).
///
/// Authorization, the iOS way:
/// - "When In Use" is asked first, when the courier starts a shift; updates
///   start once it is granted (with the `location` background mode and
///   `allowsBackgroundLocationUpdates` that is enough to keep recording
///   with the screen locked). "Always" is never required.
/// - Every change arrives in `locationManagerDidChangeAuthorization`: denied
///   or restricted stops updates (the buffer keeps uploading); granted again
///   resumes them.
/// - Precise Location off (`accuracyAuthorization == .reducedAccuracy`):
///   fixes of 1-5 km. The model tells the `PlatformState`; the SDK keeps
///   those fixes marked coarse (uploaded with `"coarse": true`, never used
///   for arrival), asks for `kCLLocationAccuracyReduced` at a slow cadence,
///   and the health report says why. The model asks once for temporary
///   full accuracy.
/// - Every authorization change also goes to the `PlatformState`: denied
///   means the SDK requests nothing (`SamplingRequest.active == false`) and
///   the health report says so.
///
/// Health: `DriverHealth` reports (the `healthUpdates()` stream; one per change of the set
/// of issues, not per fix) are shown as `health`, in words a support
/// engineer understands.
///
/// Threads: nothing here blocks the main thread. Opening the driver,
/// `recordMany` and `stats` are `async` calls the SDK runs on its own
/// threads; CoreLocation batches go through an `AsyncStream` to one
/// recording task, so fixes reach the buffer in delivery order. SDK events
/// come from the SDK's own `AsyncStream`s (`driver.events()`,
/// `driver.healthUpdates()`), iterated by main-actor tasks, the only
/// writers of published state; cancelling those tasks (stop) ends the
/// subscriptions.
final class DriverModel: NSObject, ObservableObject, CLLocationManagerDelegate, @unchecked Sendable {
    @Published private(set) var status = "not driving"
    @Published private(set) var events: [String] = []
    @Published private(set) var isDriving = false
    @Published private(set) var authorization = "not asked"
    @Published private(set) var health = ""

    private let platform: PlatformMonitor
    private let manager = CLLocationManager()
    /// CoreLocation batches, in delivery order, for the one recording task.
    private var batchSink: AsyncStream<[Location]>.Continuation?
    private var recordTask: Task<Void, Never>?
    private var driver: Driver?
    private var wantsUpdates = false
    private var askedFullAccuracy = false

    /// Iterate `driver.events()` / `driver.healthUpdates()` while driving.
    private var eventTask: Task<Void, Never>?
    private var healthTask: Task<Void, Never>?

    init(platform: PlatformMonitor) {
        self.platform = platform
        super.init()
        manager.delegate = self
        manager.activityType = .automotiveNavigation
        manager.pausesLocationUpdatesAutomatically = false
    }

    deinit {
        eventTask?.cancel()
        healthTask?.cancel()
    }

    @MainActor
    func start(settings: Settings) {
        guard driver == nil, !wantsUpdates else { return }
        wantsUpdates = true
        status = "opening…"
        let config = DriverConfig(
            baseUrl: settings.url,
            driverId: settings.userId,
            deviceId: settings.deviceId,
            bufferPath: ""
        )
        let token = settings.token
        let platform = self.platform
        Task { @MainActor [weak self] in
            guard let self else { return }
            do {
                var cfg = config
                // Creating the folder is file-system work: off the main actor.
                cfg.bufferPath = try await Task.detached { try Self.bufferURL().path }.value
                // A real app passes a TokenProvider that refreshes from its backend (async).
                // No listener: events come from driver.events() (see opened).
                let driver = try await Driver.open(config: cfg, tokens: staticToken(token: token),
                                                   listener: nil, platform: platform.state)
                try driver.start()
                self.opened(driver, sampling: driver.desiredSampling())
            } catch {
                self.wantsUpdates = false
                self.status = "cannot start: \(error)"
            }
        }
    }

    @MainActor
    private func opened(_ driver: Driver, sampling: SamplingRequest) {
        guard wantsUpdates else { // stopped while opening
            Task { try? await driver.shutdown() }
            return
        }
        self.driver = driver
        // The driver follows the PlatformState by itself; events and health come as streams.
        eventTask = Task { @MainActor [weak self] in
            for await event in driver.events() { self?.handle(event) }
        }
        healthTask = Task { @MainActor [weak self] in
            for await health in driver.healthUpdates() { self?.show(health) }
        }
        let (batches, sink) = AsyncStream.makeStream(of: [Location].self, bufferingPolicy: .bufferingNewest(256))
        batchSink = sink
        recordTask = Task { [weak self] in
            for await fixes in batches {
                do {
                    let outcomes = try await driver.recordMany(locations: fixes)
                    let stats = try await driver.stats()
                    let recorded = outcomes.filter { if case .recorded = $0 { return true } else { return false } }.count
                    let text = "recorded \(recorded)/\(fixes.count) · pending \(stats.pending) · uploaded \(stats.ackedTotal)"
                        + (stats.watched ? " · watched" : "")
                    await MainActor.run { self?.status = text }
                } catch {
                    await MainActor.run { self?.status = "recording failed: \(error)" }
                }
            }
        }
        apply(sampling)
        isDriving = true
        status = "driving"
        // "When In Use" first; updates start in locationManagerDidChangeAuthorization.
        if manager.authorizationStatus == .notDetermined {
            manager.requestWhenInUseAuthorization()
        } else {
            authorizationChanged()
        }
    }

    @MainActor
    func stop() {
        wantsUpdates = false
        manager.stopUpdatingLocation()
        healthTask?.cancel()
        healthTask = nil
        batchSink?.finish()
        batchSink = nil
        eventTask?.cancel()
        eventTask = nil
        guard let driver else { return }
        self.driver = nil
        isDriving = false
        let recording = recordTask
        recordTask = nil
        Task {
            await recording?.value // what was delivered is recorded before the shutdown
            // Unsent fixes stay in the buffer and go out at the next start.
            try? await driver.shutdown()
            await MainActor.run { self.status = "stopped" }
        }
    }

    // MARK: CLLocationManagerDelegate (main thread)

    func locationManagerDidChangeAuthorization(_ manager: CLLocationManager) {
        Task { @MainActor in self.authorizationChanged() }
    }

    @MainActor
    private func authorizationChanged() {
        let reduced = manager.accuracyAuthorization == .reducedAccuracy
        platform.locationAuthorizationChanged(manager.authorizationStatus, manager.accuracyAuthorization)
        switch manager.authorizationStatus {
        case .notDetermined:
            authorization = "not asked"
        case .denied, .restricted:
            authorization = "denied: enable location in Settings to share your position"
            manager.stopUpdatingLocation()
            log("location permission denied: recording paused, buffered fixes still upload")
        case .authorizedWhenInUse, .authorizedAlways:
            authorization = (manager.authorizationStatus == .authorizedAlways ? "always" : "while using the app")
                + (reduced ? " · approximate only" : " · precise")
            if reduced {
                log("Precise Location is off: fixes of 1-5 km, uploaded marked coarse")
                if !askedFullAccuracy {
                    askedFullAccuracy = true
                    // Info.plist NSLocationTemporaryUsageDescriptionDictionary["Delivery"].
                    manager.requestTemporaryFullAccuracyAuthorization(withPurposeKey: "Delivery")
                }
            }
            if wantsUpdates, let driver, driver.desiredSampling().active {
                manager.allowsBackgroundLocationUpdates = true // needs UIBackgroundModes "location"
                manager.showsBackgroundLocationIndicator = true
                manager.startUpdatingLocation()
            }
        @unknown default:
            authorization = "unknown"
        }
    }

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
        batchSink?.yield(fixes)
    }

    func locationManager(_ manager: CLLocationManager, didFailWithError error: Error) {
        Task { @MainActor in self.log("location error: \(error.localizedDescription)") }
    }

    @MainActor
    private func show(_ health: DriverHealth) {
        self.health = health.issues.isEmpty ? "" : health.summary
        log("health: " + (health.issues.isEmpty ? "ok" : health.issues.map(\.code).joined(separator: ", ")))
    }

    @MainActor
    private func handle(_ event: DriverEvent) {
        switch event {
        case .samplingChanged(let sampling):
            apply(sampling)
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
    @MainActor
    private func apply(_ s: SamplingRequest) {
        guard s.active else {
            // Denied / not determined: the SDK wants nothing.
            manager.stopUpdatingLocation()
            return
        }
        switch s.accuracy {
        case .high: manager.desiredAccuracy = kCLLocationAccuracyBest
        case .balanced: manager.desiredAccuracy = kCLLocationAccuracyNearestTenMeters
        case .low: manager.desiredAccuracy = kCLLocationAccuracyKilometer
        }
        // Reduced accuracy: the OS fuzzes fixes anyway; ask for exactly that (iOS 14+).
        if s.coarse { manager.desiredAccuracy = kCLLocationAccuracyReduced }
        manager.distanceFilter = s.distanceFilterM
        if wantsUpdates, driver != nil, manager.authorizationStatus == .authorizedWhenInUse
            || manager.authorizationStatus == .authorizedAlways {
            manager.startUpdatingLocation() // no-op when running; resumes after a denied → granted change
        }
    }

    @MainActor
    private func log(_ line: String) {
        events.insert(line, at: 0)
        if events.count > 50 { events.removeLast() }
    }

    private static func bufferURL() throws -> URL {
        let dir = try FileManager.default.url(for: .applicationSupportDirectory, in: .userDomainMask,
                                              appropriateFor: nil, create: true)
        return dir.appendingPathComponent("waypost-buffer.db")
    }
}
