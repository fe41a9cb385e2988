/// Predicts a chunk of fp32 weights from the parent checkpoint's weights and from Adam's moments, so that
/// a ``FrameEncoding/predictedPlanes`` frame stores only what the prediction missed (issue 18, part 3).
///
/// Between two checkpoints k steps apart, AdamW moves each weight by about `-lr · (m̂/(√v̂ + ε) + λ·w)`
/// per step. The moments of both checkpoints bracket those k updates, so
///
/// ```
/// w_t ≈ w_{t-k} + a·u_t + b·u_{t-k} + c·w_{t-k},   u = m / (√(v·s) + ε)
/// ```
///
/// with `s = 1/(1 − β₂^step)` the second moment's bias correction (the first moment's is folded into `a`
/// and `b`) and `a, b, c` fitted per chunk by least squares when it is encoded. The frame names its four
/// inputs (this checkpoint's and the parent's `exp_avg` and `exp_avg_sq` chunks at the same element
/// offsets) and carries the six constants; its base is the parent's weight chunk.
///
/// **Identical on every machine.** Decoding recomputes the prediction, and a single differing bit would
/// decode to a different chunk (which the SHA-256 check then rejects). So it uses only IEEE single
/// precision `+ − × ÷ √`, each correctly rounded, in the fixed order of ``predict(_:parent:moments:)``;
/// Swift never contracts `a * b + c` into a fused multiply-add or reassociates floating-point arithmetic
/// unless told to, and this file does not tell it to. A prediction that is not finite (a NaN or infinite
/// input, or an overflow) is replaced by the parent's weight bits, copied as an integer: NaN payloads and
/// signs differ between processors, copied bits do not. Subnormals are IEEE's on x86-64 and AArch64 Linux
/// as processes start (no flush to zero), and the store never changes the floating-point mode.
///
/// A wrong input (a parameter matched to another parameter's moments) makes a poor prediction and a large
/// residual, never a wrong decode: the residual is exact whatever the prediction.
struct WeightPrediction: Sendable, Equatable {
    /// This checkpoint's `exp_avg` and `exp_avg_sq` chunks, then the parent's, in that order.
    var inputs: [ChunkDigest]
    /// `s` and `s'`: the second moments' bias corrections, this checkpoint's and the parent's.
    var scale: Float
    var parentScale: Float
    var epsilon: Float
    /// The fitted coefficients of `u_t`, `u_{t-k}` and `w_{t-k}`.
    var a: Float
    var b: Float
    var c: Float

    static let inputCount = 4
    /// The payload prefix: input count (u8), the input digests, six f32 constants.
    static let encodedSize = 1 + inputCount * 32 + 6 * 4

    func serialized() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(Self.encodedSize)
        out.append(UInt8(inputs.count))
        for input in inputs { out += input.bytes }
        for constant in [scale, parentScale, epsilon, a, b, c] { out.appendLittleEndian(constant.bitPattern) }
        return out
    }

    /// Parses the prefix of a predicted frame's payload.
    init(parsing payload: UnsafeRawBufferPointer) throws {
        guard payload.count >= Self.encodedSize else { throw CKStoreError(.damaged, "predicted frame: the prediction is cut short") }
        guard Int(payload[0]) == Self.inputCount else { throw CKStoreError(.damaged, "predicted frame: \(payload[0]) inputs where \(Self.inputCount) are expected") }
        inputs = (0..<Self.inputCount).map { ChunkDigest(loading: UnsafeRawBufferPointer(rebasing: payload[(1 + 32 * $0)..<(33 + 32 * $0)])) }
        let constants = (0..<6).map { Float(bitPattern: payload.loadLittleEndian(UInt32.self, at: 1 + Self.inputCount * 32 + 4 * $0)) }
        (scale, parentScale, epsilon, a, b, c) = (constants[0], constants[1], constants[2], constants[3], constants[4], constants[5])
    }

    init(inputs: [ChunkDigest], scale: Float, parentScale: Float, epsilon: Float, a: Float, b: Float, c: Float) {
        precondition(inputs.count == Self.inputCount)
        (self.inputs, self.scale, self.parentScale, self.epsilon, self.a, self.b, self.c) = (inputs, scale, parentScale, epsilon, a, b, c)
    }

    /// Adam's normalized update `m / (√(v·s) + ε)`, in this order.
    @inline(__always)
    static func update(_ m: Float, _ v: Float, scale: Float, epsilon: Float) -> Float {
        let root = (v * scale).squareRoot()
        let denominator = root + epsilon
        return m / denominator
    }

    /// Element `element` of fp32 values at `values`, little-endian.
    @inline(__always)
    static func float(_ values: UnsafeRawPointer, _ element: Int) -> Float {
        Float(bitPattern: values.loadUnaligned(fromByteOffset: element &* 4, as: UInt32.self))
    }

    /// The update of element `element` from the moment chunks at `m` and `v`.
    @inline(__always)
    static func update(_ m: UnsafeRawPointer, _ v: UnsafeRawPointer, at element: Int, scale: Float, epsilon: Float) -> Float {
        update(float(m, element), float(v, element), scale: scale, epsilon: epsilon)
    }

    /// Writes the predicted bit pattern of each of `count` elements into `output`.
    ///
    /// - Parameters:
    ///   - parent: the parent's weights (`count` fp32 values, little-endian).
    ///   - moments: the four inputs' bytes, in ``inputs`` order, each `count` fp32 values.
    func predict(count: Int, parent: UnsafeRawPointer, moments: [UnsafeRawPointer], into output: UnsafeMutableRawPointer) {
        precondition(moments.count == Self.inputCount)
        let (m, v, mp, vp) = (moments[0], moments[1], moments[2], moments[3])
        let (scale, parentScale, epsilon, a, b, c) = (self.scale, self.parentScale, self.epsilon, self.a, self.b, self.c)
        for element in 0..<count {
            let offset = element &* 4
            let bits = parent.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
            let w = Float(bitPattern: bits)
            let ut = Self.update(m, v, at: element, scale: scale, epsilon: epsilon)
            let up = Self.update(mp, vp, at: element, scale: parentScale, epsilon: epsilon)
            let first = a * ut
            let second = b * up
            let third = c * w
            let step = (first + second) + third
            let predicted = w + step
            output.storeBytes(of: predicted.isFinite ? predicted.bitPattern : bits, toByteOffset: offset, as: UInt32.self)
        }
    }

    /// Fits `a`, `b` and `c` to `weights` by least squares (in double precision, over every element whose
    /// terms are finite), or nil when there is nothing to fit. Any answer decodes exactly; a better one
    /// only leaves a smaller residual.
    static func fit(count: Int, weights: UnsafeRawPointer, parent: UnsafeRawPointer, moments: [UnsafeRawPointer], scale: Float, parentScale: Float, epsilon: Float) -> (a: Float, b: Float, c: Float)? {
        // Normal equations of [u_t, u_{t-k}, w] against the change w_t − w_{t-k}, in scalars (an array per
        // element would allocate a quarter of a million times per chunk).
        var (s00, s01, s02, s11, s12, s22) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        var (r0, r1, r2) = (0.0, 0.0, 0.0)
        var used = 0
        for element in 0..<count {
            let (w, target) = (float(parent, element), float(weights, element))
            let ut = update(moments[0], moments[1], at: element, scale: scale, epsilon: epsilon)
            let up = update(moments[2], moments[3], at: element, scale: parentScale, epsilon: epsilon)
            let (x0, x1, x2) = (Double(ut), Double(up), Double(w))
            let y = Double(target) - x2
            guard x0.isFinite, x1.isFinite, x2.isFinite, y.isFinite else { continue }
            used += 1
            s00 += x0 * x0; s01 += x0 * x1; s02 += x0 * x2; s11 += x1 * x1; s12 += x1 * x2; s22 += x2 * x2
            r0 += x0 * y; r1 += x1 * y; r2 += x2 * y
        }
        let gram = [s00, s01, s02, s01, s11, s12, s02, s12, s22], moment = [r0, r1, r2]
        guard used > 0, let solution = solve3(gram, moment) else { return nil }
        let coefficients = solution.map { Float($0) }
        guard coefficients.allSatisfy(\.isFinite) else { return nil }
        return (coefficients[0], coefficients[1], coefficients[2])
    }

    /// Solves the symmetric 3×3 system by Gaussian elimination with partial pivoting; a (near-)singular
    /// one drops to the terms that are independent, down to none.
    private static func solve3(_ gram: [Double], _ moment: [Double]) -> [Double]? {
        var matrix = (0..<3).map { row in (0..<3).map { gram[row * 3 + $0] } + [moment[row]] }
        let largest = (0..<3).map { matrix[$0][$0] }.max() ?? 0
        guard largest > 0 else { return nil }
        // Gauss-Jordan: each pivot clears its column from every other row; a column with no usable pivot
        // (a term that depends on the others) keeps coefficient 0.
        var pivots = [(row: Int, column: Int)]()
        for column in 0..<3 {
            let free = (0..<3).filter { row in !pivots.contains { $0.row == row } }
            guard let pivot = free.max(by: { abs(matrix[$0][column]) < abs(matrix[$1][column]) }),
                  abs(matrix[pivot][column]) > largest * 1e-12 else { continue }
            pivots.append((pivot, column))
            for row in 0..<3 where row != pivot {
                let factor = matrix[row][column] / matrix[pivot][column]
                if factor != 0 { for k in column...3 { matrix[row][k] -= factor * matrix[pivot][k] } }
            }
        }
        var solution = [Double](repeating: 0, count: 3)
        for (row, column) in pivots { solution[column] = matrix[row][3] / matrix[row][column] }
        return solution.allSatisfy(\.isFinite) ? solution : nil
    }
}
