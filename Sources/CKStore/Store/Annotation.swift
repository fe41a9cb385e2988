import Foundation

/// A change to a store's state made after a put (a policy, a pin, a tag, a deletion, a dropped part),
/// written as a frame into a pack before the catalogue records it, so that `repair` can rebuild the
/// catalogue from packs alone (I-2) and replay these changes in order.
enum Annotation: Codable, Sendable, Equatable {
    case policy(scope: String, policy: RetentionPolicy?)
    case pin(CheckpointID, pinned: Bool)
    case tag(CheckpointID, tag: String, present: Bool)
    case remove(CheckpointID)
    case drop(CheckpointID, paths: [String], part: String, tensors: [String: [String]]?)
}

/// An annotation as stored: when it was made and its place among those made at once.
struct AnnotationRecord: Codable, Sendable {
    var time: Double
    var sequence: Int
    var change: Annotation
}

/// Records changes made after puts: each goes into a pack as an annotation frame before the catalogue
/// records it, so that a rebuild from the packs replays it (I-2).
struct AnnotationLog {
    let catalogue: LockedCatalogue
    let layout: StoreLayout
    let contexts: ZstdContextPool

    /// Writes `changes` as annotation frames into a new sealed pack, then runs `body` in a write
    /// transaction that also records that pack: the changes are durable in the packs before the
    /// catalogue shows them.
    func commit<T: Sendable>(_ changes: [Annotation], _ body: (Catalogue) throws -> T) throws -> T {
        guard !changes.isEmpty else {
            return try catalogue.with { catalogue in try catalogue.write { try body(catalogue) } }
        }
        let now = Date().timeIntervalSince1970
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let codec = FrameCodec(level: .default, contexts: contexts)
        let sink = PackSink(layout: layout, targetSize: .max)
        for (sequence, change) in changes.enumerated() {
            let bytes = Array(try encoder.encode(AnnotationRecord(time: now, sequence: sequence, change: change)))
            try sink.append(try codec.encode(bytes, digest: SHA256Hasher.digest(bytes)), kind: .annotation)
        }
        let sealed = try sink.seal()
        return try catalogue.with { catalogue in
            try catalogue.write {
                for pack in sealed { _ = try catalogue.insert(pack: pack, now: now) }
                return try body(catalogue)
            }
        }
    }
}

extension CheckpointStore {
    /// The log that records this store's annotations.
    var annotations: AnnotationLog { AnnotationLog(catalogue: catalogue, layout: layout, contexts: contexts) }
}
