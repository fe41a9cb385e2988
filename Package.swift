// swift-tools-version: 6.1
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "ckstore",
    // Linux is the platform ckstore is built, tested and measured on; macOS builds without the Linux-only
    // calls (CLinux: fallocate, sync_file_range, mallopt, madvise populate), each behind `#if os(Linux)`.
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "CKStore", targets: ["CKStore"]),
        .library(name: "CKStoreReports", targets: ["CKStoreReports"]),
        .library(name: "CKStoreS3", targets: ["CKStoreS3"]),
        .library(name: "CKStoreTestSupport", targets: ["CKStoreTestSupport"]),
        .executable(name: "ckstore", targets: ["ckstore"]),
        .executable(name: "ckstore-gen", targets: ["ckstore-gen"]),
        .executable(name: "TrainLoop", targets: ["TrainLoop"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", exact: "4.5.2"),
        .package(url: "https://github.com/swift-server/async-http-client", exact: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl", exact: "2.37.6"),
    ],
    targets: [
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        // Linux and glibc calls Swift's Glibc module does not export (sync_file_range, fallocate, mallopt).
        .systemLibrary(name: "CLinux"),
        .target(
            name: "CKStore",
            dependencies: [
                "CSQLite",
                "CZstd",
                .target(name: "CLinux", condition: .when(platforms: [.linux])),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        // The S3 transport for remotes: an `ObjectStore` over HTTP(S), with SigV4 signing on swift-crypto.
        // Kept out of the core library so that it alone carries the HTTP stack.
        .target(
            name: "CKStoreS3",
            dependencies: [
                "CKStore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        // Reports rendered for people (the audit's HTML page), kept out of the core library.
        .target(
            name: "CKStoreReports",
            dependencies: ["CKStore"],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ckstore",
            dependencies: [
                "CKStore",
                "CKStoreReports",
                "CKStoreS3",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "TrainLoop",
            dependencies: [
                "CKStore",
                "CKStoreS3",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/TrainLoop",
            swiftSettings: strictSettings
        ),
        // Fixtures, SeaweedFS, and the servers tests put where no real one can run here (instance
        // metadata, container credentials, STS, a fault-injecting S3 proxy), on NIO's HTTP server.
        .target(
            name: "CKStoreTestSupport",
            dependencies: [
                "CKStore", "CKStoreS3",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ckstore-gen",
            dependencies: [
                "CKStoreTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "CKStoreTests",
            dependencies: ["CKStore", "CKStoreReports", "CKStoreS3", "CKStoreTestSupport", .product(name: "NIOHTTP1", package: "swift-nio")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "CKStoreCLITests",
            dependencies: ["CKStore", "CKStoreTestSupport", "ckstore", "ckstore-gen", "TrainLoop"],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
