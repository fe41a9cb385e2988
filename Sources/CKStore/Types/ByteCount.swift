import Foundation

/// A number of bytes, printed in binary units (`1.5 GiB`).
public struct ByteCount: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The number of bytes.
    public var value: Int64

    /// A byte count.
    public init(_ value: Int64) { self.value = value }
    /// A byte count.
    public init(_ value: Int) { self.value = Int64(value) }

    public var description: String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var amount = Double(value)
        var unit = 0
        while abs(amount) >= 1024 && unit < units.count - 1 {
            amount /= 1024
            unit += 1
        }
        if unit == 0 { return "\(value) B" }
        let rounded = (amount * 10).rounded() / 10
        return "\(rounded) \(units[unit])"
    }

    /// Parses a size: a number and an optional unit, decimal (`kB`, `MB`, `GB`, `TB`, `PB`) or binary
    /// (`KiB` … `PiB`, and `K`, `M`, `G`, `T`, `P` as in `du -h`), case-insensitive: `500GiB`, `2TB`,
    /// `1.5G`, `1048576`.
    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("-") { throw CKStoreError(.invalidArgument, "a size may not be negative: \(text)") }
        let number = trimmed.prefix { $0.isNumber || $0 == "." }
        let unit = trimmed.dropFirst(number.count).trimmingCharacters(in: .whitespaces).lowercased()
        let factors: [String: Double] = [
            "": 1, "b": 1,
            "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15,
            "k": 0x1p10, "m": 0x1p20, "g": 0x1p30, "t": 0x1p40, "p": 0x1p50,
            "kib": 0x1p10, "mib": 0x1p20, "gib": 0x1p30, "tib": 0x1p40, "pib": 0x1p50,
        ]
        guard let value = Double(number), let factor = factors[unit], (value * factor).isFinite, value * factor < 0x1p62 else {
            throw CKStoreError(.invalidArgument, "a size is a number and a unit (500GiB, 2TB, 1.5G, 1048576), not \(text)")
        }
        self.value = Int64((value * factor).rounded())
    }

    public static func < (lhs: ByteCount, rhs: ByteCount) -> Bool { lhs.value < rhs.value }
}
