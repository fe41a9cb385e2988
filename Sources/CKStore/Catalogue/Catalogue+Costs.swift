import Foundation

/// What a put or a push of one checkpoint took (schema 008): the measurements `advise` works from.
public struct CheckpointCost: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case put, push
    }

    public var checkpoint: CheckpointID
    public var kind: Kind
    public var seconds: Double
    public var bytes: Int64
    public var recordedAt: Double

    public init(checkpoint: CheckpointID, kind: Kind, seconds: Double, bytes: Int64, recordedAt: Double) {
        self.checkpoint = checkpoint
        self.kind = kind
        self.seconds = seconds
        self.bytes = bytes
        self.recordedAt = recordedAt
    }
}

extension Catalogue {
    func recordCost(_ cost: CheckpointCost) throws {
        try statement("INSERT OR REPLACE INTO checkpoint_costs (checkpoint, kind, seconds, bytes, recorded_at) VALUES (?, ?, ?, ?, ?)")
            .run([.blob(cost.checkpoint.digest.bytes), .text(cost.kind.rawValue), .real(cost.seconds), .integer(cost.bytes), .real(cost.recordedAt)])
    }

    /// The recorded costs of a run's checkpoints, oldest first.
    func costs(run: String) throws -> [CheckpointCost] {
        try statement("""
            SELECT c.checkpoint, c.kind, c.seconds, c.bytes, c.recorded_at FROM checkpoint_costs c
            JOIN checkpoints k ON k.id = c.checkpoint JOIN runs r ON r.id = k.run_id
            WHERE r.name = ? ORDER BY c.recorded_at
            """).rows([.text(run)]) { (row) throws in
            CheckpointCost(checkpoint: CheckpointID(try row.digest(0)), kind: CheckpointCost.Kind(rawValue: row.text(1)) ?? .put,
                           seconds: row.double(2), bytes: row.int(3), recordedAt: row.double(4))
        }
    }
}
