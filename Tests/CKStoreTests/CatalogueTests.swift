@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// The catalogue's typed queries on a real SQLite database, without a store around it.
@Suite struct CatalogueTests {
    static func header(_ seed: UInt8, base: ChunkDigest? = nil, length: Int = 100) -> FrameHeader {
        let digest = SHA256Hasher.digest([seed])
        let chunk = EncodedChunk(digest: digest, encoding: base == nil ? .zstd : .differencePlanes, rawLength: 4096, payload: Array(repeating: seed, count: length), base: base)
        return FrameHeader(kind: .chunk, chunk: chunk)
    }

    static func withCatalogue(_ body: (Catalogue) throws -> Void) async throws {
        try await withTemporaryDirectory { root in try body(try Catalogue(path: root + "/ckstore.db")) }
    }

    @Test func chunksAreRecordedOnceAndFoundWithTheirChains() async throws {
        try await Self.withCatalogue { catalogue in
            let pack = PackID.random()
            let key = Self.header(1), middle = Self.header(2, base: key.digest), top = Self.header(3, base: middle.digest)
            try catalogue.write {
                try catalogue.insertPackRow(pack, size: 1000, frameCount: 3, now: 0)
                #expect(try catalogue.insertChunk(key, pack: pack, offset: 16))
                #expect(try catalogue.insertChunk(middle, pack: pack, offset: 200))
                #expect(try catalogue.insertChunk(top, pack: pack, offset: 400))
                // A second frame of a known chunk (a concurrent put's) is not recorded.
                #expect(try !catalogue.insertChunk(key, pack: pack, offset: 600))
            }
            let location = try #require(try catalogue.location(of: top.digest))
            #expect(location == ChunkLocation(top, pack: pack, offset: 400))
            #expect(try catalogue.containsChunk(key.digest))
            #expect(try !catalogue.containsChunk(SHA256Hasher.digest([9])))
            #expect(try catalogue.chainLocations(of: top.digest, limit: 5).map(\.digest) == [top.digest, middle.digest, key.digest])
            #expect(ChunkIndex.depth(of: try catalogue.chainLocations(of: top.digest, limit: 5)) == 2)
            // A limit below the depth stops early: no full frame at the end, so no depth.
            #expect(ChunkIndex.depth(of: try catalogue.chainLocations(of: top.digest, limit: 1)) == nil)
            #expect(try catalogue.chunkLocations(inPack: pack).map(\.offset) == [16, 200, 400])
            #expect(try catalogue.packsInUse() == [pack])
        }
    }

    @Test func rebaseAndMoveChangeOnlyWhatTheyNameAndRollbacksKeepNothing() async throws {
        try await Self.withCatalogue { catalogue in
            let old = PackID.random(), new = PackID.random()
            let key = Self.header(1), delta = Self.header(2, base: key.digest)
            try catalogue.write {
                try catalogue.insertPackRow(old, size: 1000, frameCount: 2, now: 0)
                try catalogue.insertPackRow(new, size: 1000, frameCount: 2, now: 0)
                try catalogue.insertChunk(key, pack: old, offset: 16)
                try catalogue.insertChunk(delta, pack: old, offset: 200)
            }
            let full = ChunkLocation(digest: delta.digest, pack: new, offset: 16, storedLength: 300, rawLength: 4096, encoding: .planes, kind: .chunk)
            // Against the wrong base nothing changes; against its own it becomes a full frame.
            #expect(try catalogue.write { try catalogue.rebase(delta.digest, from: delta.digest, to: full) } == false)
            #expect(try catalogue.write { try catalogue.rebase(delta.digest, from: key.digest, to: full) })
            #expect(try catalogue.location(of: delta.digest) == full)
            #expect(try catalogue.chainLocations(of: delta.digest, limit: 5).count == 1)

            // A move names the pack it moves from.
            let moved = ChunkLocation(digest: key.digest, pack: new, offset: 500, storedLength: key.storedLength, rawLength: 4096, encoding: .zstd, kind: .chunk)
            try catalogue.write { try catalogue.moveChunk(key.digest, from: new, to: moved) }
            #expect(try catalogue.location(of: key.digest)?.pack == old)
            try catalogue.write { try catalogue.moveChunk(key.digest, from: old, to: moved) }
            #expect(try catalogue.location(of: key.digest) == moved)
            #expect(try catalogue.packsInUse() == [new])

            // A rolled-back transaction returns its value and keeps none of its changes.
            let value = try catalogue.transaction(.immediate) { () throws -> TransactionCompletion<Int> in
                try catalogue.deleteChunk(key.digest)
                try catalogue.deletePackRow(old)
                return .rollback(42)
            }
            #expect(value == 42)
            #expect(try catalogue.containsChunk(key.digest))
            #expect(try catalogue.packRows().map(\.id).contains(old))
        }
    }

    @Test func summariesFilterByRun() async throws {
        try await withTemporaryDirectory { root in
            let store = try CheckpointStore.open(at: root + "/store", create: true)
            for (run, step) in [("a", 1), ("b", 1), ("a", 2)] {
                try FileManager.default.createDirectory(atPath: root + "/\(run)\(step)", withIntermediateDirectories: true)
                try Data("\(run) \(step)".utf8).write(to: URL(fileURLWithPath: root + "/\(run)\(step)/state.json"))
                _ = try await store.put(directory: root + "/\(run)\(step)", options: PutOptions(run: run, step: Int64(step)))
            }
            let all = try store.withCatalogue { try $0.summaries() }
            #expect(all.map { "\($0.run)@\($0.step)" } == ["a@1", "a@2", "b@1"])
            #expect(try store.withCatalogue { try $0.summaries(run: "a") }.map(\.step) == [1, 2])
            #expect(try store.withCatalogue { try $0.summaries(run: "c") }.isEmpty)
        }
    }
}

/// The layering the design promises, checked on the sources: SQL only in `Catalogue/`; commit records
/// written only by the committer.
@Suite struct LayeringTests {
    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/Sources/CKStore"

    @Test func noSQLOutsideTheCatalogue() throws {
        var offenders = [String]()
        let keywords = ["SELECT", "INSERT", "UPDATE", "DELETE FROM", "PRAGMA", "BEGIN", ".database"]
        let enumerator = try #require(FileManager.default.enumerator(atPath: Self.sources))
        var files = 0
        for case let path as String in enumerator where path.hasSuffix(".swift") {
            files += 1
            guard !path.hasPrefix("Catalogue/") else { continue }
            let text = try String(contentsOfFile: Self.sources + "/" + path, encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let code = line.trimmingCharacters(in: .whitespaces)
                guard !code.hasPrefix("//") else { continue }
                for keyword in keywords where code.contains(keyword) {
                    offenders.append("\(path):\(number + 1): \(code)")
                }
            }
        }
        #expect(files > 50, "the sources were not found at \(Self.sources)")
        #expect(offenders.isEmpty, "\(offenders.joined(separator: "\n"))")
    }

    /// Issue 32: no type but ``Committer`` writes or removes a commit record. The writes are `fileprivate`
    /// to `Commit/Committer.swift` (the compiler holds the rest of the tree to that); this checks that they
    /// stay there, and that no other file reaches the records' folders by path, in any target.
    @Test func commitRecordsAreWrittenOnlyByTheCommitter() throws {
        let root = URL(fileURLWithPath: Self.sources).deletingLastPathComponent().path
        let committer = "CKStore/Commit/Committer.swift"
        let writes = ["func commit(_ record", "func remove(_ id: CheckpointID, run", "func removeShards("]
        let paths = ["commitsRoot", "\"/commits", "\"/shards"]
        // Where the records' folder is named without writing a record: its definition, the reader, and the
        // empty folder a new store starts with.
        let namesTheFolder: Set<String> = ["CKStore/Layout/StoreLayout.swift", "CKStore/Commit/CommitLog.swift", "CKStore/Store/CheckpointStore.swift"]
        var offenders = [String]()
        var declaresWrites = false
        let enumerator = try #require(FileManager.default.enumerator(atPath: root))
        for case let path as String in enumerator where path.hasSuffix(".swift") {
            let text = try String(contentsOfFile: root + "/" + path, encoding: .utf8)
            if path == committer {
                declaresWrites = writes.allSatisfy { text.contains("fileprivate " + $0) }
                continue
            }
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let code = line.trimmingCharacters(in: .whitespaces)
                guard !code.hasPrefix("//") else { continue }
                for pattern in writes where code.contains(pattern) { offenders.append("\(path):\(number + 1): \(code)") }
                for pattern in paths where code.contains(pattern) && !namesTheFolder.contains(path) { offenders.append("\(path):\(number + 1): \(code)") }
            }
        }
        #expect(declaresWrites, "\(committer) no longer declares the record writes fileprivate")
        #expect(offenders.isEmpty, "\(offenders.joined(separator: "\n"))")
    }

    /// Issue 29: one decoder of delta chains. Only ``ChunkReader`` hands the codec a frame's base or inputs
    /// (a decode given a trailing closure or the `base:`/`input:` arguments), so that a fix to chain
    /// decoding, its checks or its limits, cannot be missed in a copy. A decode of a self-contained frame
    /// (a manifest, an annotation) may happen elsewhere: the codec refuses a delta there.
    @Test func deltaChainsAreDecodedOnlyByTheChunkReader() throws {
        let chainDecode = try NSRegularExpression(pattern: #"\.decode\([^\n]*encoding:[^\n]*\)\s*\{|\.decode\([^\n]*encoding:[^\n]*\b(base|input):"#)
        let allowed: Set<String> = ["Chunks/ChunkReader.swift", "Codec/FrameCodec.swift"]
        var offenders = [String]()
        var decoders = 0
        let enumerator = try #require(FileManager.default.enumerator(atPath: Self.sources))
        for case let path as String in enumerator where path.hasSuffix(".swift") {
            let text = try String(contentsOfFile: Self.sources + "/" + path, encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let code = String(line).trimmingCharacters(in: .whitespaces)
                guard !code.hasPrefix("//"),
                      chainDecode.firstMatch(in: code, range: NSRange(code.startIndex..., in: code)) != nil else { continue }
                if allowed.contains(path) { decoders += 1 } else { offenders.append("\(path):\(number + 1): \(code)") }
            }
        }
        // The pattern finds the reader's own chain decode, so it would find a copy.
        #expect(decoders >= 1, "the chunk reader's chain decode no longer matches the pattern; fix the test")
        #expect(offenders.isEmpty, "\(offenders.joined(separator: "\n"))")
    }

    /// Issue 29: a remote gc's grace has a floor (60 s) that only tests lower: no source but the
    /// collector's own file passes a floor, so neither the CLI nor the Python package can.
    @Test func onlyTestsLowerTheRemoteGraceFloor() throws {
        let root = URL(fileURLWithPath: Self.sources).deletingLastPathComponent().path
        var offenders = [String]()
        var declared = false
        let enumerator = try #require(FileManager.default.enumerator(atPath: root))
        for case let path as String in enumerator where path.hasSuffix(".swift") {
            let text = try String(contentsOfFile: root + "/" + path, encoding: .utf8)
            guard text.contains("minimumGrace:") else { continue }
            if path == "CKStore/Remote/RemoteCollector.swift" { declared = true } else { offenders.append(path) }
        }
        #expect(declared, "the collector no longer takes a floor; fix the test")
        #expect(offenders.isEmpty, "\(offenders)")
    }

    /// Issue 32: the folders of `Sources/CKStore` are layers. A folder uses a folder when it names a type
    /// declared at the top level of one of its files; no folder may use, directly or through others, a
    /// folder that uses it back. The first cycle found is reported with a use on each of its edges.
    @Test func noFolderCycleInTheLibrary() throws {
        let declaration = try NSRegularExpression(pattern: #"^(?:(?:public|package|internal|fileprivate|private|final|indirect)\s+|@\w+(?:\([^)]*\))?\s+)*(?:struct|class|enum|protocol|typealias|actor)\s+([A-Z][A-Za-z0-9_]*)"#, options: [.anchorsMatchLines])
        let identifier = try NSRegularExpression(pattern: #"\b[A-Z][A-Za-z0-9_]*\b"#)
        var texts = [String: [(file: String, code: String)]]()
        var owner = [String: String]()
        for folder in try FileManager.default.contentsOfDirectory(atPath: Self.sources).sorted() where !folder.hasSuffix(".docc") {
            guard let files = try? FileManager.default.contentsOfDirectory(atPath: Self.sources + "/" + folder) else { continue }
            for file in files.sorted() where file.hasSuffix(".swift") {
                let text = try String(contentsOfFile: Self.sources + "/" + folder + "/" + file, encoding: .utf8)
                // Comments out: a type named in a comment is no use of it.
                let code = text.split(separator: "\n", omittingEmptySubsequences: false)
                    .map { line in line.range(of: "//").map { String(line[..<$0.lowerBound]) } ?? String(line) }.joined(separator: "\n")
                texts[folder, default: []].append((file, code))
                for match in declaration.matches(in: code, range: NSRange(code.startIndex..., in: code)) {
                    guard let range = Range(match.range(at: 1), in: code) else { continue }
                    if owner[String(code[range])] == nil { owner[String(code[range])] = folder }
                }
            }
        }
        #expect(texts.count > 10 && owner.count > 100, "the sources were not found at \(Self.sources)")
        var uses = [String: [String: String]]()
        for (folder, files) in texts {
            for (file, code) in files {
                for match in identifier.matches(in: code, range: NSRange(code.startIndex..., in: code)) {
                    guard let range = Range(match.range, in: code), let other = owner[String(code[range])], other != folder else { continue }
                    if uses[folder, default: [:]][other] == nil { uses[folder, default: [:]][other] = "\(folder)/\(file) names \(code[range])" }
                }
            }
        }
        // Depth-first search for a back edge.
        var state = [String: Int]()
        var path = [String]()
        func cycle(from folder: String) -> [String]? {
            state[folder] = 1
            path.append(folder)
            for next in (uses[folder] ?? [:]).keys.sorted() {
                if state[next] == 1, let start = path.firstIndex(of: next) { return Array(path[start...]) + [next] }
                if state[next] == nil, let found = cycle(from: next) { return found }
            }
            path.removeLast()
            state[folder] = 2
            return nil
        }
        for folder in texts.keys.sorted() where state[folder] == nil {
            if let found = cycle(from: folder) {
                let edges = zip(found, found.dropFirst()).map { uses[$0]?[$1] ?? "" }
                Issue.record("folder cycle \(found.joined(separator: " → ")):\n\(edges.joined(separator: "\n"))")
                return
            }
        }
    }

    /// Issue 32: an operation depends on the narrow protocol of the catalogue queries it makes
    /// (`Catalogue/CatalogueQueries.swift`), not on `LockedCatalogue`. A stored property or parameter of
    /// that type outside `Catalogue/` is allowed where operations are wired together (the store's facade),
    /// for the chunk index and the committer (which are themselves the narrow seams), and, until they are
    /// narrowed too, in the operations listed below; the list only shrinks.
    @Test func operationsDependOnNarrowCatalogueProtocols() throws {
        let wiring: Set<String> = ["Store/CheckpointStore.swift", "Chunks/ChunkIndex.swift", "Commit/Committer.swift"]
        // The push and the pull are rewritten by issues 28 and 29; the annotation log is the owner of the
        // annotation protocol, as the committer is of the commit protocol.
        let notYetNarrowed: Set<String> = ["Remote/Puller.swift", "Remote/Pusher.swift", "Store/Annotation.swift"]
        var naming = Set<String>()
        let enumerator = try #require(FileManager.default.enumerator(atPath: Self.sources))
        for case let path as String in enumerator where path.hasSuffix(".swift") && !path.hasPrefix("Catalogue/") {
            let text = try String(contentsOfFile: Self.sources + "/" + path, encoding: .utf8)
            let code = text.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("//") }.joined(separator: "\n")
            // A property or parameter of the type; `LockedCatalogue(…)` builds one, which is wiring.
            if code.range(of: #": LockedCatalogue(?!\()"#, options: .regularExpression) != nil { naming.insert(path) }
        }
        #expect(naming.contains("Store/CheckpointStore.swift"), "the sources were not found at \(Self.sources)")
        let offenders = naming.subtracting(wiring).subtracting(notYetNarrowed)
        #expect(offenders.isEmpty, "operations that take LockedCatalogue instead of a narrow protocol: \(offenders.sorted())")
        // Narrowed: these name only their protocols.
        #expect(naming.isDisjoint(with: ["Restore/Restorer.swift", "Verify/Checker.swift", "Audit/Auditor.swift", "GC/GCPlanner.swift", "GC/GCExecutor.swift",
                                         "Put/Archiver.swift", "Put/Archiver+Put.swift", "Put/Archiver+Shards.swift", "Put/ShardCombiner.swift",
                                         "Remote/RemoteChecker.swift", "Remote/RemoteCollector.swift", "Repair/Repairer.swift"]))
    }
}
