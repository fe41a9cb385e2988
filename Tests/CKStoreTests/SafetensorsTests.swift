@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

@Suite struct SafetensorsTests {
    func parse(_ bytes: [UInt8]) async throws -> SafetensorsFile {
        try await withTemporaryDirectory { folder in
            let path = folder + "/model.safetensors"
            try Files.write(bytes, to: path)
            let file = try SharedFile(path: path)
            return try SafetensorsFile.parse(file, size: Int64(bytes.count), name: "model.safetensors")
        }
    }

    func parseError(_ bytes: [UInt8]) async -> String {
        do {
            _ = try await parse(bytes)
            return "parsed"
        } catch let error as CKStoreError {
            #expect(error.code == .malformedFile)
            return error.message
        } catch {
            return "\(error)"
        }
    }

    @Test func parsesEveryDtypeMetadataAndPadding() async throws {
        let builder = SafetensorsBuilder.mixedDtypes()
        let bytes = builder.build()
        let parsed = try await parse(bytes)
        #expect(parsed.metadata == ["format": "pt", "note": "mixed"])
        #expect(parsed.headerLength % 8 == 0)
        #expect(parsed.tensors.map(\.name).sorted() == builder.tensors.map(\.name).sorted())
        let scalar = try #require(parsed.tensors.first { $0.name == "scalar" })
        #expect(scalar.shape == [] && scalar.dataEnd - scalar.dataBegin == 4)
        let bf16 = try #require(parsed.tensors.first { $0.name == "weight.bf16" })
        #expect(bf16.dtype.name == "BF16" && bf16.shape == [2, 3, 4])
        // The layout covers the file exactly, and tensor regions sit where the header says.
        let layout = parsed.layout
        #expect(layout.regions.first?.begin == 0 && layout.regions.last?.end == Int64(bytes.count))
        for (earlier, later) in zip(layout.regions, layout.regions.dropFirst()) { #expect(earlier.end == later.begin) }
    }

    @Test func parsesFilesWrittenByTheReferenceLibrary() async throws {
        for name in ["dtypes.safetensors", "hf-tiny/checkpoint-2/model.safetensors", "sharded/model-00001-of-00002.safetensors", "sharded/model-00002-of-00002.safetensors"] {
            let path = RealFixtures.path(name)
            let file = try SharedFile(path: path)
            let parsed = try SafetensorsFile.parse(file, size: try file.size(), name: name)
            #expect(!parsed.tensors.isEmpty, "\(name)")
        }
        let dtypes = try SafetensorsFile.parse(try SharedFile(path: RealFixtures.path("dtypes.safetensors")), size: 941, name: "dtypes")
        #expect(Set(dtypes.tensors.map(\.dtype.name)) == ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL"])
        #expect(dtypes.tensors.first { $0.name == "scalar" }?.shape == [])
        #expect(dtypes.tensors.first { $0.name == "empty" }?.shape == [0, 4])
        #expect(dtypes.metadata?["note"] == "every common dtype")
    }

    @Test func rejectsTruncatedFile() async {
        let bytes = SafetensorsBuilder.mixedDtypes().build()
        #expect(await parseError(Array(bytes.dropLast(10))).contains("out of range"))
        #expect(await parseError(Array(bytes.prefix(5))).contains("too short"))
    }

    @Test func rejectsHeaderLengthLargerThanFile() async {
        var bytes = SafetensorsBuilder.mixedDtypes().build()
        bytes.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(50_000_000).littleEndian) { Array($0) })
        #expect(await parseError(bytes).contains("runs past the end of the file"))
        bytes.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(200_000_000).littleEndian) { Array($0) })
        #expect(await parseError(bytes).contains("exceeds the limit"))
    }

    @Test func rejectsInvalidJSON() async {
        let bytes = SafetensorsBuilder.assemble(header: #"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]"#, data: [0, 0, 0, 0])
        #expect(await parseError(bytes).contains("not valid JSON"))
        let notObject = SafetensorsBuilder.assemble(header: "[1, 2]", data: [])
        #expect(await parseError(notObject).contains("does not start with '{'"))
    }

    @Test func rejectsOverlappingUnorderedAndOutOfRangeOffsets() async {
        let overlap = SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: [UInt8](repeating: 0, count: 12))
        #expect(await parseError(overlap).contains("overlap"))
        let reversed = SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, data: [UInt8](repeating: 0, count: 8))
        #expect(await parseError(reversed).contains("end before they begin"))
        let gap = SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: [UInt8](repeating: 0, count: 8))
        #expect(await parseError(gap).contains("gap"))
        let outOfRange = SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: [UInt8](repeating: 0, count: 8))
        #expect(await parseError(outOfRange).contains("out of range"))
        let trailing = SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: [UInt8](repeating: 0, count: 8))
        #expect(await parseError(trailing).contains("trailing bytes"))
    }

    @Test func rejectsUnknownDtypeAndSizeMismatch() async {
        let unknown = SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#, data: [UInt8](repeating: 0, count: 16))
        #expect(await parseError(unknown).contains("unknown dtype F128"))
        let mismatch = SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8))
        #expect(await parseError(mismatch).contains("needs 6 bytes"))
        let badMetadata = SafetensorsBuilder.assemble(header: #"{"__metadata__":{"a":1}}"#, data: [])
        #expect(await parseError(badMetadata).contains("__metadata__"))
    }
}

@Suite struct TorchZipTests {
    @Test func parsesBuiltArchiveWithAlignedStorages() async throws {
        try await withTemporaryDirectory { folder in
            for zip64 in [false, true] {
                var builder = TorchZipBuilder(archiveName: "optimizer")
                builder.addStorage([UInt8](repeating: 1, count: 100))
                builder.addStorage([UInt8](repeating: 2, count: 3000))
                builder.forceZip64 = zip64
                let bytes = builder.build()
                let path = folder + "/opt\(zip64).pt"
                try Files.write(bytes, to: path)
                let parsed = try TorchZipFile.parse(try SharedFile(path: path), size: Int64(bytes.count), name: "opt.pt")
                let storages = parsed.entries.filter { TorchZipFile.isStorage($0.name) }
                #expect(storages.map(\.name) == ["optimizer/data/0", "optimizer/data/1"])
                #expect(storages.allSatisfy { $0.dataOffset % 64 == 0 })
                #expect(Array(bytes[Int(storages[1].dataOffset)..<Int(storages[1].dataOffset + 3000)]) == [UInt8](repeating: 2, count: 3000))
            }
        }
    }

    @Test func parsesArchivesWrittenByTorchSave() throws {
        let optimizer = RealFixtures.path("hf-tiny/checkpoint-2/optimizer.pt")
        let file = try SharedFile(path: optimizer)
        let parsed = try TorchZipFile.parse(file, size: try file.size(), name: "optimizer.pt")
        #expect(parsed.entries.filter { TorchZipFile.isStorage($0.name) }.count == 21)
        #expect(parsed.layout.regions.filter { if case .tensor = $0.kind { true } else { false } }.count == 21)

        let shared = try SharedFile(path: RealFixtures.path("shared_storage.pt"))
        let sharedParsed = try TorchZipFile.parse(shared, size: try shared.size(), name: "shared_storage.pt")
        #expect(sharedParsed.entries.filter { TorchZipFile.isStorage($0.name) }.map(\.name) == ["shared_storage/data/0", "shared_storage/data/1"])

        let legacy = try SharedFile(path: RealFixtures.path("legacy_format.pt"))
        #expect(throws: CKStoreError.self) { try TorchZipFile.parse(legacy, size: try legacy.size(), name: "legacy_format.pt") }
        let (layout, warning) = FormatDetector.layout(of: legacy, path: "legacy_format.pt", size: try legacy.size())
        #expect(layout.format == .opaque && warning == nil)
    }

    @Test func rejectsEntryPastTheEnd() async throws {
        try await withTemporaryDirectory { folder in
            var builder = TorchZipBuilder(archiveName: "archive")
            builder.addStorage([UInt8](repeating: 9, count: 4096))
            var bytes = builder.build()
            // Claim that data/0 is 1 MiB long in its central directory record.
            let name = Array("archive/data/0".utf8)
            var index = 0
            while index + 46 < bytes.count {
                if bytes[index..<(index + 4)] == [0x50, 0x4b, 0x01, 0x02], Array(bytes[(index + 46)..<(index + 46 + name.count)]) == name { break }
                index += 1
            }
            bytes.replaceSubrange((index + 20)..<(index + 28), with: [0, 0, 0x10, 0, 0, 0, 0x10, 0])
            let path = folder + "/bad.pt"
            try Files.write(bytes, to: path)
            let error = #expect(throws: CKStoreError.self) {
                try TorchZipFile.parse(try SharedFile(path: path), size: Int64(bytes.count), name: "bad.pt")
            }
            #expect(error?.message.contains("bad.pt: zip entry archive/data/0 ends past the end of the file") == true)
        }
    }
}

@Suite struct FastCDCTests {
    @Test func boundariesRespectLimitsAndAreStable() {
        var random = SeededRandom(seed: 3)
        let data = random.bytes(count: 5 << 20)
        let chunker = FastCDC.standard
        func cut(_ bytes: [UInt8]) -> [Int] {
            var lengths = [Int]()
            var start = 0
            bytes.withUnsafeBytes { buffer in
                while start < bytes.count {
                    let length = chunker.cut(UnsafeRawBufferPointer(rebasing: buffer[start...]), isEnd: true)
                    lengths.append(length)
                    start += length
                }
            }
            return lengths
        }
        let lengths = cut(data)
        #expect(lengths.reduce(0, +) == data.count)
        #expect(lengths.dropLast().allSatisfy { $0 >= chunker.minimumSize && $0 <= chunker.maximumSize })
        #expect(lengths.count > 5)
        // An insertion near the start changes only the chunks around it.
        var edited = data
        edited.insert(contentsOf: [1, 2, 3], at: 1000)
        let editedLengths = cut(edited)
        #expect(Array(lengths.suffix(lengths.count - 2)) == Array(editedLengths.suffix(lengths.count - 2)))
    }
}
