/// Numbers for millions of digests: an open-addressing table probed by the digest's first 64 bits, each
/// slot holding the digest itself beside its number, so that a lookup touches one cache line. What a
/// `Dictionary<ChunkDigest, Int32>` does, without running SipHash on every key: audits look up two
/// million references.
struct DigestIndex {
    private struct Slot {
        var digest: ChunkDigest
        var number: Int32
    }

    private var slots: [Slot]
    private let mask: Int

    /// Indexes `digests` by position; a repeated digest keeps its first position.
    init(_ digests: [ChunkDigest]) {
        var capacity = 16
        while capacity < digests.count * 2 { capacity <<= 1 }
        slots = Array(repeating: Slot(digest: .zero, number: -1), count: capacity)
        mask = capacity - 1
        for (number, digest) in digests.enumerated() {
            var slot = Int(truncatingIfNeeded: digest.prefix) & mask
            while slots[slot].number >= 0 && slots[slot].digest != digest { slot = (slot + 1) & mask }
            if slots[slot].number < 0 { slots[slot] = Slot(digest: digest, number: Int32(number)) }
        }
    }

    /// The position of `digest`, or nil.
    func number(of digest: ChunkDigest) -> Int32? {
        var slot = Int(truncatingIfNeeded: digest.prefix) & mask
        while true {
            let entry = slots[slot]
            if entry.number < 0 { return nil }
            if entry.digest == digest { return entry.number }
            slot = (slot + 1) & mask
        }
    }
}
