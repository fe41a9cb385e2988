// swift-tools-version: 6.1
// libFuzzer targets for ckstore's parsers of untrusted bytes: safetensors headers, torch.save zip
// archives, torch.distributed.checkpoint files and pack files. Built and run by `make fuzz` (see docs/fuzzing.md); not part of `make test`.
import PackageDescription

let package = Package(
    name: "ckstore-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "ckstore", path: "..")],
    targets: [.target(name: "FuzzDriver")] + ["FuzzSafetensors", "FuzzTorchZip", "FuzzPack", "FuzzDCP"].map { name in
        .executableTarget(
            name: name,
            dependencies: ["FuzzDriver", .product(name: "CKStore", package: "ckstore")],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    },
    swiftLanguageModes: [.v6]
)
