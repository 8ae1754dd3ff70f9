// swift-tools-version:6.0
import PackageDescription

// One target per box of the design (docs/architecture.md). The BPF programs in
// bpf/ are compiled by the BPFObjects plugin during `swift build`, so a fresh
// clone needs no step besides the system packages (`make deps`).
let package = Package(
    name: "alcub3",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "alcub3", targets: ["alcub3"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .systemLibrary(name: "CLibBPF", pkgConfig: "libbpf",
                       providers: [.apt(["libbpf-dev", "libelf-dev", "zlib1g-dev"])]),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp",
                       providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        .target(name: "CAlcub3", linkerSettings: [.linkedLibrary("z")]),  // zlib: container image layers
        .target(name: "KernelSupport"),
        .target(name: "Policy", dependencies: [.product(name: "Yams", package: "Yams")]),
        .target(name: "Store", dependencies: ["CSQLite", "KernelSupport", .product(name: "Crypto", package: "swift-crypto")]),
        .plugin(name: "BPFObjects", capability: .buildTool()),
        .target(
            name: "Telemetry",
            dependencies: ["CLibBPF", "CAlcub3", "KernelSupport"],
            plugins: ["BPFObjects"]),
        .target(name: "Sandbox", dependencies: ["CAlcub3", "CSeccomp", "KernelSupport", "Policy",
                                               .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "Enforcement", dependencies: ["Telemetry", "Sandbox", "Policy", "KernelSupport", "CLibBPF"]),
        .target(name: "Integrity", dependencies: ["CAlcub3", "KernelSupport", .product(name: "Crypto", package: "swift-crypto")]),
        // Behavioural models on syscall sequences: pure Swift, no C, no kernel (docs/detection.md).
        .target(name: "Analysis", dependencies: ["KernelSupport"]),
        .target(
            name: "Service",
            dependencies: ["Telemetry", "Sandbox", "Policy", "Store", "KernelSupport", "CAlcub3", "Enforcement", "Integrity", "Analysis",
                           .product(name: "Logging", package: "swift-log"), .product(name: "Crypto", package: "swift-crypto")]),
        .target(
            name: "Commands",
            dependencies: [
                "Telemetry", "Sandbox", "Policy", "Service", "Store", "KernelSupport", "Enforcement", "Analysis", "Integrity",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(name: "alcub3", dependencies: ["Commands"]),
        // `make bench`: alcub3 side by side with the tools a user would pick instead.
        .executableTarget(name: "alcub3-bench", dependencies: ["Telemetry", "Sandbox", "KernelSupport", "Policy", "Store", "Integrity", "Analysis"]),
        .testTarget(name: "TelemetryTests", dependencies: ["Telemetry", "Sandbox", "CLibBPF", "CAlcub3"]),
        .testTarget(name: "SandboxTests", dependencies: ["Sandbox", "Telemetry"]),
        .testTarget(name: "CommandsTests", dependencies: ["Commands"]),
        .testTarget(name: "PolicyTests", dependencies: ["Policy"]),
        .testTarget(name: "StoreTests", dependencies: ["Store"]),
        .testTarget(name: "ServiceTests", dependencies: ["Service", "Telemetry"]),
        .testTarget(name: "IntegrityTests", dependencies: ["Integrity"]),
        .testTarget(name: "AnalysisTests", dependencies: ["Analysis"]),
        .testTarget(name: "EnforcementTests", dependencies: ["Enforcement", "Telemetry", "Sandbox", "Policy"]),
    ],
    swiftLanguageModes: [.v6]
)
