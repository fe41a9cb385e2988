import CKStoreTestSupport
import Foundation

/// Runs the built `ckstore` binary (it sits next to the test bundle in the build folder).
enum CLI {
    static let buildFolder: String = {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: executable).deletingLastPathComponent().path
    }()

    static var binary: String { buildFolder + "/ckstore" }

    struct Output {
        var status: Int32
        var stdout: String
        var stderr: String
        var killed: Bool
    }

    /// Runs `ckstore` (or another built `program`) with `arguments` to completion.
    static func run(_ arguments: [String], environment: [String: String] = [:], program: String = "ckstore") throws -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: buildFolder + "/" + program)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "CKSTORE_PATH")
        env.merge(environment) { _, new in new }
        process.environment = env
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Output(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                      stderr: String(decoding: stderr, as: UTF8.self), killed: process.terminationReason == .uncaughtSignal)
    }

    /// Starts `ckstore`, kills it with SIGKILL after `delay` seconds unless it finished, and reports.
    static func runAndKill(_ arguments: [String], after delay: Double) throws -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(delay)
        while process.isRunning && Date() < deadline { usleep(1000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        return Output(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self), stderr: "",
                      killed: process.terminationReason == .uncaughtSignal)
    }

    static func json(_ text: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(text.utf8))
    }
}

/// Checkpoint folders with fresh content, fast even in debug builds: tensor bytes come from /dev/urandom.
enum RandomCheckpoint {
    static func randomBytes(_ count: Int) throws -> [UInt8] {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
        defer { try? handle.close() }
        return Array(try handle.read(upToCount: count) ?? Data())
    }

    /// Writes model.safetensors, optimizer.pt and trainer_state.json with about `megabytes` MiB of tensors.
    static func write(to folder: String, megabytes: Int, step: Int) throws {
        let tensorBytes = megabytes << 20 / 3
        var model = SafetensorsBuilder(metadata: ["format": "pt"])
        let elements = tensorBytes / 4 / 2
        model.add("w0", dtype: "F32", shape: [elements], data: try randomBytes(elements * 4))
        model.add("w1", dtype: "F32", shape: [elements], data: try randomBytes(elements * 4))
        try Files.write(model.build(), to: folder + "/model.safetensors")
        var optimizer = TorchZipBuilder(archiveName: "optimizer")
        optimizer.addStorage(try randomBytes(tensorBytes))
        optimizer.addStorage(try randomBytes(tensorBytes))
        try Files.write(optimizer.build(), to: folder + "/optimizer.pt")
        try Files.write(Array(#"{"global_step": \#(step), "epoch": 1.0, "log_history": [{"step": \#(step), "loss": 2.5}]}"#.utf8), to: folder + "/trainer_state.json")
    }
}
