import Foundation

extension CheckpointStore {
    /// Records what a put or a push cost; a measurement the catalogue cannot take is dropped.
    func recordCost(_ cost: CheckpointCost) {
        try? withCatalogue { catalogue in try catalogue.write { try catalogue.recordCost(cost) } }
    }

    /// The recorded put and push costs of a run's checkpoints, oldest first.
    public func costs(run: String) throws(CKStoreError) -> [CheckpointCost] {
        try CKStoreError.wrapping("reading the costs of \(run)") { try withCatalogue { try $0.costs(run: run) } }
    }
}
