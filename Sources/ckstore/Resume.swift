import ArgumentParser
import CKStore
import Foundation

struct Resume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore the newest valid checkpoint of a run, from this store or the remote, whichever is newer.",
        discussion: """
            For restart scripts: the newest valid checkpoint of RUN among this store and --remote (by step;
            the local copy at equal steps) is restored into DEST, every byte checked. A remote checkpoint is
            pulled into this store first, fetching only what it lacks; one that does not arrive whole is
            passed over for the next older. The step is printed on standard output (`--json`: id, run,
            step, source (local or remote), local_step, remote_step, bytes_downloaded, destination, files,
            bytes). A store that does not exist yet is created (a fresh machine).

            When neither has a checkpoint of RUN, it fails (exit status 1) with the error code not_found
            (`--json`: on standard error), which a restart script reads as "start from scratch".
            """
    )

    @OptionGroup var store: StoreOptions
    @Argument(help: "The run.") var run: String
    @Argument(help: "The folder to restore into (created; must be empty unless --force).") var destination: String
    @Flag(help: "Restore into a non-empty folder, replacing files with the same names.") var force = false
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var remote: RemoteOption
    @OptionGroup var transfers: TransferOptions
    @OptionGroup var progress: ProgressOptions

    struct Report: Encodable {
        var point: ResumePoint
        var destination: String
        var files: Int
        var bytes: Int64

        enum CodingKeys: String, CodingKey {
            case id, run, step, source, remote, localStep, remoteStep, bytesDownloaded, destination, files, bytes
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(point.id, forKey: .id)
            try container.encode(point.run, forKey: .run)
            try container.encode(point.step, forKey: .step)
            try container.encode(point.source, forKey: .source)
            try container.encode(point.remote, forKey: .remote)
            try container.encode(point.localStep, forKey: .localStep)
            try container.encode(point.remoteStep, forKey: .remoteStep)
            try container.encode(point.bytesDownloaded, forKey: .bytesDownloaded)
            try container.encode(destination, forKey: .destination)
            try container.encode(files, forKey: .files)
            try container.encode(bytes, forKey: .bytes)
        }
    }

    func run() async throws {
        let checkpointStore = try store.open(create: remote.remote != nil)
        let source = try remote.remote == nil ? nil : remote.connect(checkpointStore)
        let pullRenderer = progress.renderer()
        let point = try await checkpointStore.resumePoint(run: run, remote: source, jobs: transfers.jobs, progress: pullRenderer?.handler)
        pullRenderer?.finish()
        var options = RestoreOptions(force: force)
        let renderer = progress.renderer()
        options.progress = renderer?.handler
        let result = try await checkpointStore.restore(point.id, to: destination, options: options)
        renderer?.finish()
        if json {
            try JSONOutput.print(Report(point: point, destination: destination, files: result.files.count, bytes: result.bytes))
        } else {
            print(point.step)
            let origin = point.source == "remote"
                ? "pulled from remote \(point.remote ?? "") (this store's newest valid: \(point.localStep.map { "step \($0)" } ?? "none"))"
                : "from this store\(point.remote.map { " (remote \($0)'s newest: \(point.remoteStep.map { "step \($0)" } ?? "none"))" } ?? "")"
            Terminal.standardError("resuming \(run)@\(point.step) (\(point.id.short)) \(origin): \(result.files.count) files, \(ByteCount(result.bytes)) into \(destination)")
        }
    }
}
