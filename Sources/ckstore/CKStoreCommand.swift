import ArgumentParser
import CKStore
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `ckstore`: the command-line face of the library. Subcommands parse, call ``CheckpointStore`` and print.
struct CKStoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckstore",
        abstract: "A content-addressed checkpoint store for machine-learning training.",
        discussion: """
            Stores trainer checkpoint folders deduplicated and compressed, and gives them back byte for byte.

            Environment:
              CKSTORE_PATH          the store folder when --store is not given (else ./.ckstore)
              CKSTORE_LOCK_TIMEOUT  seconds to wait for another process's lock on the catalogue before
                                    failing with "locked" (default 60)

            Exit codes: 0 success, 1 a failure you can act on (bad input, damage, not found), 2 usage error.
            With --json, a failure also prints {"error": {"code": …, "message": …}} on standard error; the
            codes are listed in the README.
            """,
        version: CKStoreVersion.release,
        subcommands: [
            Init.self, Put.self, Get.self, List.self, Show.self, Verify.self, Repair.self, Settings.self, Policy.self, Pin.self, Unpin.self,
            Tag.self, Untag.self, Remove.self, GC.self, Audit.self, DiskUsage.self, RemoteCommand.self, Push.self, Pull.self,
            Resume.self, Watch.self, Advise.self, Version.self, Completion.self,
        ]
    )
}

@main
enum Main {
    static func main() async {
        CheckpointStore.configureAllocatorForLargeBuffers()
        do {
            var command = try CKStoreCommand.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CKStoreError {
            if Terminal.wantsJSON {
                Terminal.jsonError(code: error.code.name, message: error.message, detail: ["kind": error.code.description])
            } else {
                Terminal.error(error.description)
            }
            exit(1)
        } catch let code as ExitCode {
            exit(code.rawValue)
        } catch {
            let exitCode = CKStoreCommand.exitCode(for: error)
            let message = CKStoreCommand.fullMessage(for: error)
            if exitCode == .success {
                print(message)
                exit(0)
            }
            if Terminal.wantsJSON {
                Terminal.jsonError(code: "usage", message: CKStoreCommand.message(for: error), detail: [:])
            } else {
                Terminal.standardError(message)
            }
            // Usage errors exit with 2, as the CLI contract says (ArgumentParser's default is 64).
            exit(2)
        }
    }
}

/// The store location shared by every subcommand.
struct StoreOptions: ParsableArguments {
    @Option(name: .long, help: "The store folder (default: $CKSTORE_PATH, else ./.ckstore).")
    var store: String?

    var path: String {
        if let store { return store }
        if let environment = getenv("CKSTORE_PATH"), !String(cString: environment).isEmpty {
            return String(cString: environment)
        }
        return ".ckstore"
    }

    func open(create: Bool = false) throws -> CheckpointStore {
        try CheckpointStore.open(at: path, create: create)
    }

    /// Opens the store and resolves a checkpoint reference in it.
    func resolve(_ reference: String) async throws -> (CheckpointStore, CheckpointID) {
        let store = try open()
        return (store, try await store.checkpoint(for: CheckpointReference(parsing: reference)))
    }
}

enum Terminal {
    static func standardError(_ text: String) {
        let line = text.hasSuffix("\n") ? text : text + "\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    static func error(_ text: String) { standardError("ckstore: error: " + text) }

    /// Whether the command line asked for JSON output (`--json`): errors are then JSON too, even when
    /// the command line did not parse.
    static var wantsJSON: Bool { CommandLine.arguments.dropFirst().contains("--json") }

    /// `{"error": {"code": …, "message": …, …}}` on standard error, one line.
    static func jsonError(code: String, message: String, detail: [String: String]) {
        var object = detail
        object["code"] = code
        object["message"] = message
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(["error": object])) ?? Data(#"{"error":{"code":"internal","message":"could not encode the error"}}"#.utf8)
        standardError(String(decoding: data, as: UTF8.self))
    }
    static func warning(_ text: String) { standardError("ckstore: warning: " + text) }
}

/// Runs a check of an option's value in `validate()`, so that a value the library refuses is reported as
/// a usage error (exit 2, with the command's usage) rather than a failure of the command.
func asValidation<T>(_ check: () throws -> T) throws -> T {
    do {
        return try check()
    } catch let error as CKStoreError {
        throw ValidationError(error.message)
    }
}
