/// An optimizer's parameter groups, as its `state_dict()` holds them: which parameters each group has
/// (by the optimizer's own numbering, the keys of `state`) and its hyperparameters.
public struct OptimizerSummary: Codable, Sendable, Equatable {
    public struct Group: Codable, Sendable, Equatable {
        /// The parameters of this group, as numbered in `state`.
        public var params: [Int]
        public var lr: Double?
        public var betas: [Double]?
        public var eps: Double?
        public var weightDecay: Double?
        /// The optimizer step of the group's first parameter that has state.
        public var step: Double?

        enum CodingKeys: String, CodingKey {
            case params, lr, betas, eps, step
            case weightDecay = "weight_decay"
        }
    }

    public var groups: [Group]
}
