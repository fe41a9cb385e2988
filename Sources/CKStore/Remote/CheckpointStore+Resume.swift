import Foundation

/// Where a resume starts: the newest valid checkpoint of a run among this store and a remote, and
/// where it was found.
public struct ResumePoint: Codable, Sendable, Equatable {
    public var id: CheckpointID
    public var run: String
    public var step: Int64
    /// `local` when this store held it, `remote` when it was pulled now.
    public var source: String
    /// The remote consulted, if any.
    public var remote: String?
    /// The newest valid step this store had before, and the newest the remote had; nil for none.
    public var localStep: Int64?
    public var remoteStep: Int64?
    /// Bytes the pull downloaded (0 when the local copy was newest).
    public var bytesDownloaded: Int64 = 0
}

extension CheckpointStore {
    /// The newest valid checkpoint of `run` in this store and on `remote` together, pulled into this store
    /// when the remote's is newer (only the frames this store lacks): where a restarted job resumes.
    ///
    /// A machine that comes back with an older local store resumes from the newer remote checkpoint
    /// another machine pushed, not from its own; a remote checkpoint that does not arrive whole is passed
    /// over for the next older one, down to the local one. The remote's checkpoints are compared by step;
    /// at equal steps the local copy is used (nothing to download).
    ///
    /// - Throws: `notFound` when neither has a checkpoint of the run; `damaged` when it has some but none
    ///   verifies; `remote` when the remote cannot be read (a resume never silently ignores it).
    public func resumePoint(run: String, remote: Remote?, jobs: Int = 4, progress: ProgressHandler? = nil) async throws(CKStoreError) -> ResumePoint {
        var local: (id: CheckpointID, step: Int64)?
        var localDamage: CKStoreError?
        do throws(CKStoreError) {
            local = try await CKStoreError.wrapping("finding the newest valid checkpoint of \(run)") {
                let id = try await latestValid(run: run)
                return (id, try summary(of: id).step)
            }
        } catch where error.code == .notFound {
        } catch where error.code == .damaged {
            localDamage = error
        }
        var point = local.map { ResumePoint(id: $0.id, run: run, step: $0.step, source: "local", remote: remote?.name, localStep: $0.step) }
        if let remote {
            var newer = [RemoteCommit]()
            do throws(CKStoreError) {
                let commits = try await remoteCheckpoints(remote, run: run)
                point?.remoteStep = commits.last?.step
                newer = commits.filter { $0.step > (local?.step ?? Int64.min) }.reversed()
            } catch where error.code == .notFound && error.message.contains("no ckstore remote") {
                // An empty bucket or prefix: nothing pushed yet.
            }
            var failures = [String]()
            for commit in newer {
                do throws(CKStoreError) {
                    let report = try await pull(.step(run: run, step: commit.step), from: remote, jobs: jobs, progress: progress)
                    return ResumePoint(id: report.id, run: run, step: report.step, source: "remote", remote: remote.name,
                                       localStep: local?.step, remoteStep: newer.first?.step, bytesDownloaded: report.bytesDownloaded)
                } catch where error.code == .damaged {
                    failures.append("\(run)@\(commit.step): \(error.message)")
                }
            }
            if point == nil && !failures.isEmpty {
                throw CKStoreError(.damaged, "no checkpoint of run \(run) arrives whole from remote \(remote.name): " + failures.joined(separator: "; "))
            }
        }
        if let point { return point }
        if let localDamage { throw localDamage }
        throw CKStoreError(.notFound, "no checkpoint of run \(run) in this store\(remote.map { " or on remote \($0.name)" } ?? "")")
    }
}
