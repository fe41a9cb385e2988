/// The one error type of ckstore: what happened, to which file, tensor, checkpoint or chunk, and why.
///
/// Modelled on swift-nio's `FileSystemError`: a ``Code`` that can grow without breaking callers, a message
/// written for the person at the terminal, the underlying cause (an errno, a SQLite or zstd code) and the
/// source location that raised it.
public struct CKStoreError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public var code: Code
    /// A message that names what is concerned and, where possible, what to do.
    public var message: String
    /// The lower-level error that caused this one, if any.
    public var cause: (any Error & Sendable)?
    /// Where in ckstore the error was raised.
    public var location: SourceLocation

    /// Creates an error.
    public init(
        _ code: Code,
        _ message: String,
        cause: (any Error & Sendable)? = nil,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.cause = cause
        self.location = SourceLocation(file: file, line: line)
    }

    public var description: String {
        if let cause {
            return "\(message) (\(cause))"
        }
        return message
    }

    /// A source location in ckstore's code.
    public struct SourceLocation: Sendable, Hashable {
        /// The source file.
        public var file: String
        /// The line in it.
        public var line: Int
    }

    /// The kind of a ``CKStoreError``; a struct around a private enum so that kinds can be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Wrapped: Hashable, Sendable {
            case invalidArgument
            case notFound
            case ambiguousReference
            case alreadyExists
            case malformedFile
            case ioFailure
            case noSpace
            case damaged
            case catalogue
            case unsupportedSchema
            case compression
            case unsafePath
            case conflict
            case overBudget
            case cancelled
            case internalInvariant
            case locked
            case remote
        }

        private var wrapped: Wrapped
        private init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The caller passed something ckstore cannot use (a bad flag value, a malformed reference).
        public static let invalidArgument = Code(.invalidArgument)
        /// A checkpoint, run, file or tensor that was asked for does not exist.
        public static let notFound = Code(.notFound)
        /// A reference matches more than one checkpoint.
        public static let ambiguousReference = Code(.ambiguousReference)
        /// Something that must not exist yet exists (a non-empty restore target).
        public static let alreadyExists = Code(.alreadyExists)
        /// An input file is not what its name says (a damaged safetensors file, a bad zip).
        public static let malformedFile = Code(.malformedFile)
        /// A system call failed.
        public static let ioFailure = Code(.ioFailure)
        /// The disk is full.
        public static let noSpace = Code(.noSpace)
        /// Stored data failed a checksum or digest check, or is missing.
        public static let damaged = Code(.damaged)
        /// The SQLite catalogue reported an error.
        public static let catalogue = Code(.catalogue)
        /// The catalogue was written by a newer ckstore.
        public static let unsupportedSchema = Code(.unsupportedSchema)
        /// zstd failed to compress or decompress.
        public static let compression = Code(.compression)
        /// A path would leave the folder it must stay in.
        public static let unsafePath = Code(.unsafePath)
        /// The request contradicts what is stored (same run and step, different content).
        public static let conflict = Code(.conflict)
        /// The store cannot be brought under a storage budget without deleting protected checkpoints.
        public static let overBudget = Code(.overBudget)
        /// The operation was cancelled (its task was); nothing it had not committed was kept.
        public static let cancelled = Code(.cancelled)
        /// ckstore broke one of its own rules: a bug, to be reported with the message.
        public static let internalInvariant = Code(.internalInvariant)
        /// Another process holds the store (its catalogue stayed busy past the wait).
        public static let locked = Code(.locked)
        /// A remote (object storage) refused a request or could not be reached; the message names the
        /// remote, the request and the HTTP status.
        public static let remote = Code(.remote)

        public var description: String { String(describing: wrapped) }

        /// The stable name of the code that `--json` errors carry and scripts match on; several codes share
        /// a name where a script has nothing different to do (the README lists them).
        public var name: String {
            switch wrapped {
            case .invalidArgument, .malformedFile: "invalid_input"
            case .notFound: "not_found"
            case .ambiguousReference: "ambiguous_reference"
            case .alreadyExists: "already_exists"
            case .ioFailure, .catalogue: "io"
            case .noSpace: "no_space"
            case .damaged, .compression: "damaged"
            case .unsupportedSchema: "unsupported_version"
            case .unsafePath: "unsafe_path"
            case .conflict: "conflict"
            case .overBudget: "over_budget"
            case .cancelled: "cancelled"
            case .internalInvariant: "internal"
            case .locked: "locked"
            case .remote: "remote"
            }
        }
    }
}

/// An `errno` value, wrapped so that it prints by name.
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
    /// The `errno` value.
    public var rawValue: Int32
    /// Wraps an `errno` value.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public var description: String {
        guard let text = strerror(rawValue) else { return "errno \(rawValue)" }
        return String(cString: text)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CKStoreError {
    /// `error` as a ``CKStoreError``: itself if it is one, `cancelled` for a cancellation, else wrapped
    /// as an I/O failure.
    static func wrap(_ error: any Error) -> CKStoreError {
        if let error = error as? CKStoreError { return error }
        if error is CancellationError { return CKStoreError(.cancelled, "cancelled", cause: error as (any Error & Sendable)) }
        return CKStoreError(.ioFailure, "\(error)", cause: error as (any Error & Sendable))
    }

    /// Runs `body`, turning whatever it throws into a ``CKStoreError`` (``converting(_:doing:)``).
    static func wrapping<T>(_ what: @autoclosure () -> String, _ body: () async throws -> T) async throws(CKStoreError) -> T {
        do {
            return try await body()
        } catch {
            throw converting(error, doing: what())
        }
    }

    /// The synchronous form of ``wrapping(_:_:)``.
    static func wrapping<T>(_ what: @autoclosure () -> String, _ body: () throws -> T) throws(CKStoreError) -> T {
        do {
            return try body()
        } catch {
            throw converting(error, doing: what())
        }
    }

    /// `error` as the error of the operation `what`: itself if it is a ``CKStoreError``, `cancelled`
    /// for a cancellation, else an I/O failure naming `what`.
    static func converting(_ error: any Error, doing what: String) -> CKStoreError {
        if let error = error as? CKStoreError { return error }
        if error is CancellationError { return CKStoreError(.cancelled, "\(what) was cancelled; nothing was committed") }
        return CKStoreError(.ioFailure, "\(what) failed: \(error)", cause: error as (any Error & Sendable))
    }
}
