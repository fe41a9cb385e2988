extension GCPlanner {
    /// The checkpoints `gc --budget` deletes beyond the policies, oldest first, so that packs and catalogue
    /// fit in `budget` once the sweep has rewritten every pack with a dead frame.
    ///
    /// - Throws: ``CKStoreError/Code/overBudget`` when even deleting every unprotected checkpoint is not
    ///   enough; nothing is deleted then.
    func planBudget(_ budget: Int64, plans: [GCPlan.RunRetention], deleted: [CheckpointID], drops: [CheckpointID: GCPlan.PartDrop]) throws -> GCReport.BudgetOutcome {
        let (usage, remaining) = try catalogue.budgetInputs(drops: drops, layout: layout)
        let index = Dictionary(usage.checkpoints.enumerated().map { ($1.summary.id, $0) }, uniquingKeysWith: { first, _ in first })
        var slimmed = [Int: [Int32]]()
        for (id, digests) in remaining { if let checkpoint = index[id] { slimmed[checkpoint] = digests.compactMap { usage.number(of: $0) } } }
        var simulation = UsageSimulation(usage, deleted: Set(deleted.compactMap { index[$0] }), remaining: slimmed)

        // Unprotected: kept only because the run has no policy. Oldest first.
        let candidates = plans.flatMap { $0.plan.kept.filter { $0.value == [.noPolicy] }.keys }
            .compactMap { index[$0] }
            .sorted { (usage.checkpoints[$0].summary.createdAt, usage.checkpoints[$0].summary.step) < (usage.checkpoints[$1].summary.createdAt, usage.checkpoints[$1].summary.step) }
        let before = usage.catalogueBytes + usage.packBytes
        // The annotation pack recording the deletions is written before the sweep.
        func projected() -> Int64 {
            usage.catalogueBytes + simulation.packBytes + Int64(PackFormat.headerSize + PackFormat.footerSize) + Int64(simulation.deleted.count + drops.count) * 512
        }
        var extra = [Int]()
        for candidate in candidates where projected() > budget {
            simulation.delete(candidate)
            extra.append(candidate)
        }
        let after = projected()
        guard after <= budget else {
            throw CKStoreError(
                .overBudget,
                "the store cannot fit in \(ByteCount(budget)): with every checkpoint deleted that no rule protects (the newest of each run, pinned ones, those a policy keeps) it would still take \(ByteCount(after)), \(ByteCount(after - budget)) over; nothing was deleted"
            )
        }
        return GCReport.BudgetOutcome(
            budgetBytes: budget, diskBytesBefore: before, diskBytesAfter: after,
            deletedForBudget: extra.map { GCReport.Deleted(id: usage.checkpoints[$0].summary.id, run: usage.checkpoints[$0].summary.run, step: usage.checkpoints[$0].summary.step) }
        )
    }

}
