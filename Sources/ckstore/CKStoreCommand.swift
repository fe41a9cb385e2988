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
            The store is --store PATH, else $CKSTORE_PATH, else ./.ckstore.
            Exit codes: 0 success, 1 a failure you can act on (bad input, damage, not found), 2 usage error.
            """,
        subcommands: [Init.self, Put.self, Get.self, List.self, Show.self, Verify.self, Repair.self, Settings.self, Policy.self, Pin.self, Unpin.self, Tag.self, Untag.self, Remove.self, GC.self, Audit.self, DiskUsage.self]
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
            Terminal.error(error.description)
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
            Terminal.standardError(message)
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
    static func warning(_ text: String) { standardError("ckstore: warning: " + text) }
}
