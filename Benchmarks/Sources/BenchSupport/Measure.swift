import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One run of a command: wall time and the peak resident memory of the process (and its children).
public struct Measurement: Sendable {
    public var seconds: Double
    public var peakKiB: Int

    public init(seconds: Double, peakKiB: Int) {
        self.seconds = seconds
        self.peakKiB = peakKiB
    }
}

public enum Command {
    /// Runs `arguments` (the first is the program, looked up on PATH), waits, and measures it.
    /// Output goes to /dev/null unless `capture` is given.
    public static func measure(_ arguments: [String], quiet: Bool = true) throws -> Measurement {
        var pid: pid_t = 0
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if quiet {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let started = Date()
        let status = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
        guard status == 0 else { throw BenchError("cannot start \(arguments[0]): \(String(cString: strerror(status)))") }
        var waitStatus: Int32 = 0
        var usage = rusage()
        while wait4(pid, &waitStatus, 0, &usage) == -1 {
            guard errno == EINTR else { throw BenchError("wait4 failed for \(arguments[0])") }
        }
        let seconds = Date().timeIntervalSince(started)
        let exited = (waitStatus & 0x7f) == 0
        let code = (waitStatus >> 8) & 0xff
        guard exited, code == 0 else { throw BenchError("\(arguments.joined(separator: " ")) failed (status \(waitStatus))") }
        return Measurement(seconds: seconds, peakKiB: Int(usage.ru_maxrss))
    }

    /// Runs a shell command line and measures it.
    public static func shell(_ line: String) throws -> Measurement {
        try measure(["/bin/sh", "-c", line])
    }

    public static func output(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    /// Runs `arguments`, returns its wall time and standard output; fails when it fails.
    public static func measureCapturing(_ arguments: [String]) throws -> (measurement: Measurement, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        let started = Date()
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let seconds = Date().timeIntervalSince(started)
        guard process.terminationStatus == 0 else { throw BenchError("\(arguments.joined(separator: " ")) failed (status \(process.terminationStatus))") }
        return (Measurement(seconds: seconds, peakKiB: 0), String(decoding: data, as: UTF8.self))
    }

    public static func exists(_ program: String) -> Bool {
        (try? output(["sh", "-c", "command -v \(program)"]))?.isEmpty == false
    }
}

public struct BenchError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return .nan }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

public func folderSize(_ path: String) -> Int64 {
    var total: Int64 = 0
    if let enumerator = FileManager.default.enumerator(atPath: path) {
        while let name = enumerator.nextObject() as? String {
            if let attributes = try? FileManager.default.attributesOfItem(atPath: path + "/" + name),
               attributes[.type] as? FileAttributeType == .typeRegular, let size = attributes[.size] as? NSNumber {
                total += size.int64Value
            }
        }
    }
    return total
}

/// Has a child process write `gibibytes` of fresh memory and exit, so that the pages the next command
/// allocates (page cache for what it writes, its heap) are backed by the host.
///
/// This machine is a virtual machine with free page reporting: memory the guest frees (all of the page
/// cache after `drop_caches`) is handed back to the host, and the first write to such a page costs a
/// host fault. Without this, a command that writes 1 GiB after a cache drop pays up to a second for
/// that, depending on how long ago the cache was dropped (`cp -r` of 913 MiB took 0.4 to 1.9 s), which is
/// the virtual machine's cost, not the command's. The freed pages go back on the free lists and are
/// handed out again first; reporting waits 2 s before returning free memory to the host. A child does
/// the writing because a spawned command inherits its parent's peak memory figure.
public func pretouchFreeMemory(gibibytes: Int) throws {
    _ = try Command.measure(["dd", "if=/dev/zero", "of=/dev/null", "bs=\(gibibytes)G", "count=1", "iflag=fullblock"])
}
