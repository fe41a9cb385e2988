// swift-tools-version: 6.1
// The benchmarks: their own package, so that `swift test` at the root never builds them. They measure the
// root package's release binaries (ckstore, ckstore-gen) as separate processes, beside cp, zstd, restic
// and borg, so every figure is wall time and peak memory of a whole command.
import PackageDescription

let package = Package(
    name: "ckstore-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "ckstore", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
    ],
    targets: [
        // Running commands and measuring their wall time and peak memory, shared by the runners.
        .target(name: "BenchSupport", swiftSettings: [.enableUpcomingFeature("ExistentialAny")]),
        .executableTarget(
            name: "ckstore-bench",
            dependencies: [
                "BenchSupport",
                .product(name: "CKStoreTestSupport", package: "ckstore"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // ckstore beside restic, borg and zstd on simulated training series (issue 6).
        .executableTarget(
            name: "ckstore-compare",
            dependencies: [
                "BenchSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // SIGKILL trials with deleted catalogues and logs, checked after every trial (issue 14).
        .executableTarget(
            name: "ckstore-torture",
            dependencies: [
                .product(name: "CKStoreTestSupport", package: "ckstore"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        // ckstore push and remote restore beside restic's S3 backend and rclone, on SeaweedFS (issue 15).
        .executableTarget(
            name: "ckstore-remote-bench",
            dependencies: [
                "BenchSupport",
                .product(name: "CKStoreTestSupport", package: "ckstore"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .executableTarget(
            name: "ckstore-train-bench",
            dependencies: [
                .product(name: "CKStore", package: "ckstore"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
