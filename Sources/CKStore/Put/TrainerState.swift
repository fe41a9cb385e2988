import Foundation

/// What a Hugging Face Trainer's `trainer_state.json` says about a checkpoint.
struct TrainerState {
    var globalStep: Int64?
    var epoch: Double?
    /// The last logged value of every numeric metric in `log_history`.
    var metrics: [String: Double]
    var json: JSONValue

    /// Parses `trainer_state.json`; nil when it is not a JSON object.
    init?(bytes: [UInt8]) {
        // Python's json writes a diverged loss as a bare NaN or Infinity, which JSON has no literal for.
        guard let json = try? NonFiniteJSON.decode(JSONValue.self, from: bytes), case .object = json else { return nil }
        self.json = json
        if case .integer(let step)? = json["global_step"] { globalStep = step }
        epoch = json["epoch"]?.doubleValue.flatMap { $0.isFinite ? $0 : nil }
        metrics = [:]
        if case .array(let history)? = json["log_history"] {
            for case .object(let entry) in history {
                for (key, value) in entry where key != "step" && key != "epoch" {
                    if let number = value.doubleValue { metrics[key] = number }
                }
            }
        }
    }
}
