import Foundation

extension CheckpointStore {
    /// Records what pushes cost, in one transaction; measurements the catalogue cannot take are dropped
    /// (they are a cache for `advise`, never worth failing a push for).
    func recordCosts(_ costs: [CheckpointCost]) {
        guard !costs.isEmpty else { return }
        try? withCatalogue { catalogue in try catalogue.write { for cost in costs { try catalogue.recordCost(cost) } } }
    }

    /// The recorded put and push costs of a run's checkpoints, oldest first.
    public func costs(run: String) throws(CKStoreError) -> [CheckpointCost] {
        try CKStoreError.wrapping("reading the costs of \(run)") { try withCatalogue { try $0.costs(run: run) } }
    }
}
