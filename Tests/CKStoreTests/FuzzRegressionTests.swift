@testable import CKStore
import CKStoreTestSupport
import Foundation
import Testing

/// Inputs for the parsers of untrusted bytes that once crashed them, or that sit on the edges a fuzzer
/// probes: each must parse or throw `CKStoreError`, never trap. `make fuzz` adds to this list.
@Suite struct FuzzRegressionTests {
    static func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

    static let safetensors: [[UInt8]] = [
        [],
        littleEndian(UInt64.max),
        littleEndian(UInt64(2)) + Array("{}".utf8),
        littleEndian(UInt64(4)) + Array("{\"a\"".utf8),
        SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#, data: []),
        SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]),
        SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#, data: [0]),
        SafetensorsBuilder.assemble(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,9223372036854775807]}}"#, data: [0, 0, 0, 0]),
        SafetensorsBuilder.assemble(header: #"{"__metadata__":null}"#, data: []),
    ]

    static let zips: [[UInt8]] = {
        var eocdOnly = [UInt8](repeating: 0, count: 22)
        eocdOnly.replaceSubrange(0..<4, with: littleEndian(UInt32(0x0605_4b50)))
        var hugeCount = eocdOnly
        hugeCount.replaceSubrange(10..<12, with: littleEndian(UInt16(0xffff)))
        hugeCount.replaceSubrange(12..<16, with: littleEndian(UInt32(0xffff_ffff)))
        var builder = TorchZipBuilder(archiveName: "a")
        builder.addStorage([1, 2, 3, 4])
        let valid = builder.build()
        var badOffset = valid
        // Point the last central directory entry's local header offset far past the end.
        if let range = badOffset.lastRange(of: littleEndian(UInt32(0x0201_4b50))) {
            badOffset.replaceSubrange((range.lowerBound + 42)..<(range.lowerBound + 46), with: littleEndian(UInt32(0x7fff_ffff)))
        }
        // A zip64 record whose directory offset and size each fit in an Int64 but whose sum does not:
        // `make fuzz` found that it trapped (an overflow in the bounds check) until they were compared by
        // subtraction. The fuzzer's own input is in Tests/Fixtures/fuzz.
        var zip64Builder = TorchZipBuilder(archiveName: "a")
        zip64Builder.forceZip64 = true
        zip64Builder.addStorage([1, 2, 3, 4])
        var overflowing = zip64Builder.build()
        if let range = overflowing.lastRange(of: littleEndian(UInt32(0x0606_4b50))) {
            overflowing.replaceSubrange((range.lowerBound + 40)..<(range.lowerBound + 56), with: littleEndian(UInt64(1) << 62 | 7) + littleEndian(UInt64(1) << 62 | 9))
        }
        let found = FileManager.default.contents(atPath: Repository.root + "/Tests/Fixtures/fuzz/torchzip-zip64-directory-overflow").map { [UInt8]($0) } ?? []
        return [[], [0x50, 0x4b, 0x03, 0x04], eocdOnly, hugeCount, Array(valid.prefix(valid.count / 2)) + Array(valid.suffix(22)), badOffset, overflowing, found]
    }()

    static let packs: [[UInt8]] = {
        let header = Array("CKPACK".utf8) + [0, 1] + littleEndian(UInt32(1)) + littleEndian(UInt32(0))
        func footer(trailerOffset: UInt64, count: UInt64) -> [UInt8] {
            littleEndian(trailerOffset) + littleEndian(count) + littleEndian(UInt64(0)) + littleEndian(UInt64(0)) + Array("CKPKEND1".utf8)
        }
        let frameMagicOnly = header + Array("CKFR".utf8) + [UInt8](repeating: 0xff, count: 200)
        return [
            [],
            header,
            header + footer(trailerOffset: 16, count: 0),
            header + footer(trailerOffset: 16, count: UInt64.max / 50),
            header + footer(trailerOffset: UInt64.max, count: 1),
            frameMagicOnly,
            frameMagicOnly + footer(trailerOffset: 16, count: 1),
        ]
    }()

    @Test(arguments: safetensors.indices) func safetensorsEdgeCasesThrowCleanly(_ index: Int) {
        expectNoTrap { try FormatValidation.safetensors(Self.safetensors[index]) }
    }

    @Test(arguments: zips.indices) func zipEdgeCasesThrowCleanly(_ index: Int) {
        expectNoTrap { try FormatValidation.torchZip(Self.zips[index]) }
    }

    @Test(arguments: packs.indices) func packEdgeCasesThrowCleanly(_ index: Int) {
        expectNoTrap { try FormatValidation.pack(Self.packs[index]) }
    }

    /// DCP metadata pickles `make fuzz` found: one whose containers hold themselves leaked (a reference
    /// cycle per read) until a read empties its containers when it ends. It must still read or fail cleanly.
    @Test func dcpMetadataFoundByTheFuzzerReadsOrFails() throws {
        let found = try #require(FileManager.default.contents(atPath: Repository.root + "/Tests/Fixtures/fuzz/dcp-metadata-cycle"))
        #expect(FormatValidation.dcpMetadata([UInt8](found)) == nil, "the fuzzer's input is no DCP Metadata")
        // A list that holds itself, through the memo: EMPTY_LIST, BINPUT 0, BINGET 0, APPEND, STOP. As a
        // value it is infinitely deep, so the reader refuses it (its depth bound); the next read works.
        #expect(FormatValidation.dcpMetadata([0x80, 0x02, 0x5d, 0x71, 0x00, 0x68, 0x00, 0x61, 0x2e]) == nil)
        var reader = PickleReader()
        #expect(reader.read([0x80, 0x02, 0x5d, 0x71, 0x00, 0x68, 0x00, 0x61, 0x2e]) == nil)
        #expect(reader.read([0x80, 0x02, 0x4b, 0x07, 0x2e]) == .int(7))
    }

    @Test func validInputsStillParse() throws {
        var builder = SafetensorsBuilder()
        builder.add("x", dtype: "F32", shape: [2], data: [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(try FormatValidation.safetensors(builder.build()) == 1)
        var zip = TorchZipBuilder(archiveName: "a")
        zip.addStorage([1, 2, 3, 4])
        #expect(try FormatValidation.torchZip(zip.build()) == 5)
    }

    /// Runs `body`; a thrown `CKStoreError` and a return are both fine (the test fails only by trapping,
    /// or by throwing some other error type).
    private func expectNoTrap(_ body: () throws -> Int) {
        do {
            _ = try body()
        } catch {
            #expect(error is CKStoreError, "unexpected error type: \(error)")
        }
    }
}
