@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// Issue 29: remote gc is safe by construction, not by timing. Two stores push checkpoints that reuse
/// each other's frames while a third collects garbage with a short grace (tests only: the floor is 60 s);
/// each schedule stops a push or a gc at one step of its protocol, lets the other side run, then lets it go
/// on or kills it and retries. After every schedule, every checkpoint listed on the remote restores
/// byte-exact on a fresh machine.
///
/// The remote is a folder behind ``ScriptedObjectStore``, which runs a hook before and after each request
/// of one side (a push's, a gc's): the schedules are sequences of those hooks, not races of sleeps. The
/// only waits are the grace period itself, which is real time on both sides.
@Suite(.serialized) struct RemoteGCInterleavingTests {
    /// The grace the collector uses. The schedules hold whatever it is, but a push's commit must still
    /// land within half of it after its check, which is the one timing the protocol rests on: with 2 s,
    /// a commit PUT to the folder remote slowed past 1 s by a concurrent test's gigabytes of fsync landed
    /// late once, after a gc had deleted what it named. 4 s leaves a loaded machine 2 s.
    static let grace: Double = 4

    /// A folder remote that runs `hook` before and after each request: it may wait (a stalled push or
    /// gc) or throw (a process killed before that request).
    final class ScriptedObjectStore: ObjectStore, @unchecked Sendable {
        enum Operation: Sendable { case get, put, head, delete, list }
        enum Moment: Sendable { case before, after }
        typealias Hook = @Sendable (Operation, String, Moment) async throws -> Void

        let base: FileObjectStore
        let hook: Hook

        init(root: String, hook: @escaping Hook) {
            base = FileObjectStore(root: root)
            self.hook = hook
        }

        var description: String { base.description }

        private func run<T>(_ operation: Operation, _ key: String, _ body: () async throws -> T) async throws -> T {
            try await hook(operation, key, .before)
            let value = try await body()
            try await hook(operation, key, .after)
            return value
        }

        func get(_ key: String, range: Range<Int64>?) async throws -> [UInt8] { try await run(.get, key) { try await base.get(key, range: range) } }
        func put(_ key: String, _ body: [UInt8], ifAbsent: Bool) async throws -> Bool { try await run(.put, key) { try await base.put(key, body, ifAbsent: ifAbsent) } }
        func head(_ key: String) async throws -> ObjectInfo? { try await run(.head, key) { try await base.head(key) } }
        func delete(_ key: String) async throws { try await run(.delete, key) { try await base.delete(key) } }
        func list(prefix: String) async throws -> [ObjectInfo] { try await run(.list, prefix) { try await base.list(prefix: prefix) } }
    }

    /// A one-way flag a schedule waits on; waiting is cancellable, as an abandoned request is.
    final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var raised = false

        var isRaised: Bool { lock.withLock { raised } }
        func raise() { lock.withLock { raised = true } }
        func wait() async throws {
            while !isRaised { try await Task.sleep(for: .milliseconds(5)) }
        }
    }

    /// Counts events across tasks.
    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func next() -> Int { lock.withLock { value += 1; return value } }
    }

    /// Store A pushed `a@1` (files `shared.bin` and `own.bin`) and `a@2`; the collector keeps the last
    /// checkpoint of run `a`, so its gc deletes `a@1`'s commit object. Store B synced while `a@1` was listed
    /// and holds `b@1`, whose `shared.bin` is `a@1`'s: its push reuses `a@1`'s objects, which only `b@1`'s
    /// commit will keep alive. Everything on the remote is older than the grace.
    struct World {
        let root: String
        let a: CheckpointStore
        let b: CheckpointStore
        let collector: CheckpointStore
        /// Where each checkpoint's files are, by `run@step`.
        let folders: [String: String]

        var remoteRoot: String { root + "/remote" }
        var url: String { "file://" + remoteRoot }

        func remote(_ hook: @escaping ScriptedObjectStore.Hook = { _, _, _ in }) -> Remote {
            Remote(name: "folder", url: url, objects: ScriptedObjectStore(root: remoteRoot, hook: hook))
        }

        init(root: String) async throws {
            self.root = root
            var random = SeededRandom(seed: UInt64.random(in: 1...UInt64.max))
            let shared = random.bytes(count: 600_000)
            func folder(_ name: String, _ files: [String: [UInt8]]) throws -> String {
                for (file, bytes) in files { try Files.write(bytes, to: root + "/" + name + "/" + file) }
                return root + "/" + name
            }
            folders = [
                "a@1": try folder("a1", ["shared.bin": shared, "own.bin": random.bytes(count: 300_000)]),
                "a@2": try folder("a2", ["own.bin": random.bytes(count: 300_000)]),
                "b@0": try folder("b0", ["first.bin": random.bytes(count: 50_000)]),
                "b@1": try folder("b1", ["shared.bin": shared, "extra.bin": random.bytes(count: 300_000)]),
            ]
            a = try CheckpointStore.open(at: root + "/a", create: true)
            b = try CheckpointStore.open(at: root + "/b", create: true)
            collector = try CheckpointStore.open(at: root + "/c", create: true)
            let plain = Remote(name: "folder", url: "file://" + root + "/remote", objects: FileObjectStore(root: root + "/remote"))
            for step: Int64 in [1, 2] {
                let put = try await a.put(directory: folders["a@\(step)"]!, options: PutOptions(run: "a", step: step))
                _ = try await a.push([put.id], to: plain)
            }
            // B learns the remote (a@1 included) with its first push.
            let first = try await b.put(directory: folders["b@0"]!, options: PutOptions(run: "b", step: 0))
            _ = try await b.push([first.id], to: plain)
            _ = try await b.put(directory: folders["b@1"]!, options: PutOptions(run: "b", step: 1))
            // A first gc records its grace in `gc/pending`, which bounds how long a push's commit may
            // take (here below the floor, which only tests can do).
            _ = try await collector.collectGarbage(on: plain, grace: RemoteGCInterleavingTests.grace, minimumGrace: 0)
            var policy = RetentionPolicy()
            policy.keepLast = 1
            try collector.setPolicy(policy, run: "a")
            try await Task.sleep(for: .seconds(RemoteGCInterleavingTests.grace + 0.2))
        }

        var b1: CheckpointID { get throws { try b.list().first { $0.run == "b" && $0.step == 1 }!.id } }

        func gc(_ remote: Remote? = nil) async throws -> RemoteGCReport {
            try await collector.collectGarbage(on: remote ?? self.remote(), grace: RemoteGCInterleavingTests.grace, minimumGrace: 0)
        }

        /// Rounds of gc a grace period apart, enough to delete whatever is condemned and unused.
        func settle() async throws {
            for _ in 0..<3 {
                _ = try await gc()
                try await Task.sleep(for: .seconds(RemoteGCInterleavingTests.grace + 0.1))
            }
        }

        /// Every checkpoint listed on the remote restores byte-exact on a fresh machine; returns them.
        @discardableResult
        func everyListedCheckpointRestores() async throws -> [String] {
            let fresh = try CheckpointStore.open(at: root + "/fresh-\(UUID().uuidString.prefix(8))", create: true)
            var restored = [String]()
            for commit in try await fresh.remoteCheckpoints(remote()) {
                let name = "\(commit.run)@\(commit.step)"
                let pulled = try await fresh.pull(.step(run: commit.run, step: commit.step), from: remote())
                let out = root + "/out-\(UUID().uuidString.prefix(8))"
                _ = try await fresh.restore(pulled.id, to: out)
                #expect(try Files.tree(out) == Files.tree(try #require(folders[name])), "\(name) does not restore as put")
                restored.append(name)
            }
            return restored.sorted()
        }
    }

    static func seconds(since start: ContinuousClock.Instant) -> Double { (ContinuousClock.now - start) / .seconds(1) }

    /// The first window: a gc stamped its condemnations when it started and wrote `gc/pending` at the end.
    /// Here the gc stalls before that write for more than half the grace; meanwhile B checks (and sees
    /// nothing condemned) and commits within half the grace of its check, but only after the next gc
    /// has listed the commit objects. With the stamp taken at the start, that next gc came a grace period
    /// after it and deleted `a@1`'s objects, which `b@1` names; stamped after the write, it may not.
    @Test func aPushThatChecksWhileGCWritesItsCondemnationsIsSafe() async throws {
        try await withTemporaryDirectory { root in
            let world = try await World(root: root)
            let gcWriting = Flag(), gcGo = Flag(), bAtCommit = Flag(), bGo = Flag()
            let stalledGC = world.remote { operation, key, moment in
                if operation == .put, key == RemoteLayout.pending, moment == .before, !gcGo.isRaised {
                    gcWriting.raise()
                    try await gcGo.wait()
                }
            }
            let start = ContinuousClock.now
            let first = Task { try await world.gc(stalledGC) }
            try await gcWriting.wait()
            try await Task.sleep(for: .seconds(Self.grace * 0.6 - Self.seconds(since: start)))
            let pushing = world.remote { operation, key, moment in
                if operation == .put, key.hasPrefix(RemoteLayout.commitsPrefix), moment == .before, !bGo.isRaised {
                    bAtCommit.raise()
                    try await bGo.wait()
                }
            }
            let b1 = try world.b1
            let push = Task { try await world.b.push([b1], to: pushing) }
            try await bAtCommit.wait()
            gcGo.raise()
            let condemned = try await first.value
            #expect(condemned.deleted.count == 1 && condemned.condemnedObjects >= 1, "\(condemned)")
            try await Task.sleep(for: .seconds(max(0, Self.grace * 1.05 - Self.seconds(since: start))))
            // The next gc: B's commit goes through once it has listed the commit objects.
            let listings = Counter()
            let listing = world.remote { operation, key, moment in
                if operation == .list, key == RemoteLayout.commitsPrefix, moment == .after, listings.next() == 2 { bGo.raise() }
            }
            _ = try await world.gc(listing)
            bGo.raise()
            #expect(try await push.value.pushed == [b1])
            try await world.settle()
            #expect(try await world.everyListedCheckpointRestores() == ["a@2", "b@0", "b@1"])
        }
    }

    /// The second window: a commit PUT that hangs (a slow server, retries) after its check. The gc
    /// condemns and, a grace period later, deletes `a@1`'s objects; then the hanging PUT would land,
    /// naming them. The push gives the PUT up at half the grace after its check, checks again, finds
    /// them condemned and uploads their frames again.
    @Test func aCommitDelayedPastHalfTheGraceIsGivenUpAndCheckedAgain() async throws {
        try await withTemporaryDirectory { root in
            let world = try await World(root: root)
            let bAtCommit = Flag(), bGo = Flag()
            let commits = Counter()
            let pushing = world.remote { operation, key, moment in
                if operation == .put, key.hasPrefix(RemoteLayout.commitsPrefix), moment == .before, commits.next() == 1 {
                    bAtCommit.raise()
                    try await bGo.wait()
                }
            }
            let b1 = try world.b1
            let push = Task { try await world.b.push([b1], to: pushing) }
            try await bAtCommit.wait()
            let condemned = try await world.gc()
            #expect(condemned.deleted.count == 1 && condemned.condemnedObjects >= 1, "\(condemned)")
            try await Task.sleep(for: .seconds(Self.grace + 0.1))
            _ = try await world.gc()
            // Whatever the first PUT would have named is gone or rescued now; let it go.
            bGo.raise()
            let report = try await push.value
            #expect(report.pushed == [b1])
            #expect(commits.next() >= 3, "the hanging commit was not given up and written again")
            try await world.settle()
            #expect(try await world.everyListedCheckpointRestores() == ["a@2", "b@0", "b@1"])
        }
    }

    /// Where a push is killed: before its index object (its packs are uploaded), before its check (its
    /// index is written), before its commit (it checked).
    enum KillPoint: String, CaseIterable, Sendable {
        case beforeIndex, beforeCheck, beforeCommit

        func matches(_ operation: ScriptedObjectStore.Operation, _ key: String) -> Bool {
            switch self {
            case .beforeIndex: operation == .put && key.hasPrefix(RemoteLayout.indexPrefix)
            case .beforeCheck: operation == .get && key == RemoteLayout.pending
            case .beforeCommit: operation == .put && key.hasPrefix(RemoteLayout.commitsPrefix)
            }
        }
    }

    /// The push killed at each step of the protocol, gc rounds while it is dead (its objects condemned
    /// and deleted as orphans, `a@1`'s too), then the retry; for a kill before the index, the retry also
    /// stalls before its index while a gc deletes the packs it had just found present (the index then
    /// names packs that are gone, which the check finds). Every listed checkpoint restores.
    @Test(arguments: KillPoint.allCases)
    func aPushKilledAtEachStepAndRetriedAcrossGCsLosesNothing(_ point: KillPoint) async throws {
        try await withTemporaryDirectory { root in
            let world = try await World(root: root)
            let killed = Flag()
            let dying = world.remote { operation, key, moment in
                if moment == .before, !killed.isRaised, point.matches(operation, key) {
                    killed.raise()
                    throw CKStoreError(.ioFailure, "killed before \(operation) \(key)")
                }
            }
            let b1 = try world.b1
            await #expect(throws: CKStoreError.self) { try await world.b.push([b1], to: dying) }
            #expect(killed.isRaised)
            // Dead for a grace period: its young objects become old enough to condemn, then go.
            try await Task.sleep(for: .seconds(Self.grace + 0.1))
            _ = try await world.gc()
            try await Task.sleep(for: .seconds(Self.grace + 0.1))
            if point == .beforeIndex {
                // The retry finds its packs, then stalls before writing their index while a gc deletes them.
                let atIndex = Flag(), go = Flag()
                let stalling = world.remote { operation, key, moment in
                    if operation == .put, key.hasPrefix(RemoteLayout.indexPrefix), moment == .before, !go.isRaised {
                        atIndex.raise()
                        try await go.wait()
                    }
                }
                let retry = Task { try await world.b.push([b1], to: stalling) }
                try await atIndex.wait()
                let deleting = try await world.gc()
                #expect(deleting.deletedObjects >= 1, "\(deleting)")
                go.raise()
                #expect(try await retry.value.pushed == [b1])
            } else {
                _ = try await world.gc()
                #expect(try await world.b.push([b1], to: world.remote()).pushed == [b1])
            }
            try await world.settle()
            #expect(try await world.everyListedCheckpointRestores() == ["a@2", "b@0", "b@1"])
        }
    }
}
