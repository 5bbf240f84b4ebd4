// swift-tools-version:5.9
// The Waypost SDK for iOS as a Swift package:
//   - WaypostFFI: the Rust core, a static-library XCFramework (iOS device arm64,
//     simulator arm64 + x86_64) with the C header and module map `WaypostFFI`;
//   - Waypost: the uniffi-generated Swift (Sources/Waypost/Generated/, written by
//     the build script) and the hand-written AsyncStream extensions in Sources/Waypost.
// Build WaypostFFI.xcframework and the generated Swift first, on a Mac:
//   bindings/swift/build-xcframework.sh
// then add this folder to an app (Xcode: File > Add Package Dependencies > Add Local…,
// or XcodeGen `packages: { Waypost: { path: … } }` as ios-sample/project.yml does).
// For a remote package, upload the zip the script makes and replace `path:` with
// `url:` + `checksum:` (the script prints both lines).
import PackageDescription

let package = Package(
    name: "Waypost",
    platforms: [.iOS(.v15)],
    products: [
        .library(name: "Waypost", targets: ["Waypost"]),
    ],
    targets: [
        .binaryTarget(name: "WaypostFFI", path: "WaypostFFI.xcframework"),
        .target(
            name: "Waypost",
            dependencies: ["WaypostFFI"],
            path: "Sources/Waypost",
            linkerSettings: [
                // The Rust static library uses these system libraries/frameworks.
                .linkedLibrary("c++"),
                .linkedFramework("SystemConfiguration"),
            ]
        ),
    ]
)
