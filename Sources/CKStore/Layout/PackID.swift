/// A pack's name: 16 random bytes as 32 hex characters.
struct PackID: Hashable, Sendable, CustomStringConvertible {
    let hex: String

    init?(hex: String) {
        guard hex.utf8.count == 32, [UInt8](hexString: hex) != nil else { return nil }
        self.hex = hex
    }

    private init(bytes: [UInt8]) { hex = bytes.hexString }

    static func random() -> PackID {
        var generator = SystemRandomNumberGenerator()
        return PackID(bytes: (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }

    /// The path of the sealed pack relative to the store: `packs/ab/<id>.pack`.
    var relativePath: String { "packs/\(hex.prefix(2))/\(hex).pack" }
    var description: String { hex }
}
