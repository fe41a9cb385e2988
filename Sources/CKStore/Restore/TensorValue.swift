/// A named tensor: its element type, shape and bytes (little-endian elements in row-major order, as
/// safetensors stores them).
///
/// The bytes are a Swift array: handing one to a save shares it instead of copying it, and copy-on-write
/// keeps the save's view as it was if the caller changes its own array afterwards (the caller's next
/// write copies the array once).
public struct TensorValue: Sendable, Equatable {
    /// The tensor's name in its safetensors file.
    public var name: String
    /// The element type.
    public var dtype: DType
    /// The dimensions, outermost first.
    public var shape: [Int]
    /// The elements, little-endian, row-major.
    public var bytes: [UInt8]

    /// A tensor from raw bytes.
    ///
    /// - Throws: ``CKStoreError`` (`invalidArgument`) when the byte count does not match the shape and
    ///   dtype, or the name is empty.
    public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) throws {
        guard !name.isEmpty else { throw CKStoreError(.invalidArgument, "a tensor needs a name") }
        guard shape.allSatisfy({ $0 >= 0 }), let expected = dtype.byteCount(elements: shape.reduce(1, *)), expected == bytes.count else {
            throw CKStoreError(.invalidArgument, "tensor \(name): \(bytes.count) bytes do not hold a \(dtype) tensor of shape \(shape)")
        }
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// An `F32` tensor from floats (copied: the tensor is a snapshot of them).
    public init(name: String, shape: [Int], floats: [Float]) throws {
        try self.init(name: name, dtype: .f32, shape: shape, bytes: floats.withUnsafeBytes { [UInt8](copying: $0) })
    }

    /// The elements as floats, for an `F32` tensor.
    ///
    /// - Throws: ``CKStoreError`` (`invalidArgument`) for any other dtype.
    public func floats() throws -> [Float] {
        guard dtype == .f32 else { throw CKStoreError(.invalidArgument, "tensor \(name) is \(dtype), not F32") }
        return [Float](unsafeUninitializedCapacity: bytes.count / 4) { buffer, count in
            bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: $0) }
            count = bytes.count / 4
        }
    }
}

extension DType {
    private init(known name: String) {
        self.name = name
        self.bitWidth = Self.known[name] ?? 8
    }

    /// 32-bit IEEE float.
    public static let f32 = DType(known: "F32")
    /// 16-bit IEEE float.
    public static let f16 = DType(known: "F16")
    /// bfloat16.
    public static let bf16 = DType(known: "BF16")
    /// 64-bit IEEE float.
    public static let f64 = DType(known: "F64")
    /// 64-bit signed integer.
    public static let i64 = DType(known: "I64")
}
