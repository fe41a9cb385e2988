import CKStore
import FuzzDriver

/// The fuzz target: every input must either parse or throw a CKStoreError; anything else (a trap, an
/// out-of-bounds access caught by AddressSanitizer, a hang) is a bug.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    _ = try? FormatValidation.distcp(bytes)
    _ = FormatValidation.dcpMetadata(bytes)
    return 0
}

/// SwiftPM links executables with `main` aliased to this symbol; hand control to libFuzzer.
@_cdecl("FuzzDCP_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    ckstore_run_fuzzer(argc, argv, fuzzOne)
}
