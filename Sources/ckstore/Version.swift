import ArgumentParser
import CKStore
import Foundation

struct Version: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the version and the formats this ckstore reads and writes.",
        discussion: "The Python package and remote stores check these before they trust a binary or a store."
    )

    @Flag(help: "Print JSON.") var json = false

    /// What `version --json` prints.
    struct Report: Encodable {
        var version = CKStoreVersion.release
        var packFormat = CKStoreVersion.packFormat
        var manifestFormat = CKStoreVersion.manifestFormat
        var catalogueSchema = CKStoreVersion.catalogueSchema
        var frameEncodings = CKStoreVersion.frameEncodings
    }

    func run() async throws {
        let report = Report()
        if json {
            try JSONOutput.print(report)
        } else {
            print("ckstore \(report.version) (pack format \(report.packFormat), manifest format \(report.manifestFormat), catalogue schema \(report.catalogueSchema))")
        }
    }
}

struct Completion: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a shell completion script: bash, zsh or fish.",
        discussion: """
            bash:  source <(ckstore completion bash)        (or install it as
                   /usr/share/bash-completion/completions/ckstore; `make install` does)
            zsh:   ckstore completion zsh > "${fpath[1]}/_ckstore"
            fish:  ckstore completion fish > ~/.config/fish/completions/ckstore.fish
            """
    )

    @Argument(help: "The shell: bash, zsh or fish.") var shell: String

    func validate() throws {
        guard CompletionShell(rawValue: shell) != nil else {
            throw ValidationError("completion takes bash, zsh or fish, not \(shell)")
        }
    }

    func run() throws {
        guard let shell = CompletionShell(rawValue: shell) else { return }
        print(CKStoreCommand.completionScript(for: shell))
    }
}
