/// A number of bytes, printed in binary units (`1.5 GiB`).
public struct ByteCount: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var value: Int64

    public init(_ value: Int64) { self.value = value }
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

    public static func < (lhs: ByteCount, rhs: ByteCount) -> Bool { lhs.value < rhs.value }
}
