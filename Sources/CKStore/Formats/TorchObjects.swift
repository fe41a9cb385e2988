/// What the pickle of a `torch.save` archive says about its storages, read as data (``PickleReader``):
/// each storage's element type, a name from where its tensor sits in the saved object, and, for an
/// optimizer's `state_dict()`, its parameter groups and hyperparameters.
///
/// Names are the keys and indices leading to the tensor, joined by dots: `state.12.exp_avg` in an
/// optimizer's state, `model.layers.3.attn.q_proj.weight` in a model's. A storage used by several tensors
/// (views) takes the name of the first; its shape is the tensor's when that one tensor covers it all,
/// else the storage is described as one dimension of its elements.
struct TorchObjects: Sendable {
    /// One storage as the pickle describes it.
    struct Storage: Sendable, Equatable {
        var name: String?
        var dtype: DType?
        var elementWidth: Int
        var shape: [Int]?
    }

    /// By storage key (`17` for the entry `archive/data/17`).
    var storages: [String: Storage] = [:]
    /// Set when the object is an optimizer's state dict (`state` and `param_groups`).
    var optimizer: OptimizerSummary?

    /// torch storage classes: their safetensors dtype (nil where safetensors has none) and element width.
    static let storageTypes: [String: (dtype: String?, width: Int)] = [
        "FloatStorage": ("F32", 4), "DoubleStorage": ("F64", 8), "HalfStorage": ("F16", 2), "BFloat16Storage": ("BF16", 2),
        "LongStorage": ("I64", 8), "IntStorage": ("I32", 4), "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1),
        "ByteStorage": ("U8", 1), "BoolStorage": ("BOOL", 1), "UInt16Storage": ("U16", 2), "UInt32Storage": ("U32", 4),
        "UInt64Storage": ("U64", 8), "Float8_e4m3fnStorage": ("F8_E4M3", 1), "Float8_e5m2Storage": ("F8_E5M2", 1),
        // Complex numbers are pairs of floats: grouped by their float parts.
        "ComplexFloatStorage": ("C64", 4), "ComplexDoubleStorage": (nil, 8),
    ]

    /// Reads `pickle`; `scalar` reads the value of a one-element storage (an optimizer's `step`).
    init(pickle: [UInt8], scalar: (TorchStorageRecord) -> Double? = { _ in nil }) {
        var reader = PickleReader()
        let object = reader.read(pickle)
        for record in reader.storages {
            guard let type = Self.storageTypes[record.type] else { continue }
            storages[record.key] = Storage(name: nil, dtype: type.dtype.flatMap { DType(safetensorsName: $0) }, elementWidth: type.width, shape: nil)
        }
        guard let object else { return }
        var seen = Set<String>()
        name(object, path: [], seen: &seen)
        optimizer = OptimizerSummary(object, scalar: scalar)
    }

    private mutating func name(_ value: PickleValue, path: [String], seen: inout Set<String>) {
        switch value {
        case .tensor(let tensor):
            let key = tensor.storage.key
            // A later view of a storage already named adds nothing.
            guard !seen.contains(key) else { return }
            seen.insert(key)
            let elements = tensor.shape.reduce(Int64(1)) { $0.multipliedReportingOverflow(by: $1).overflow ? -1 : $0 * $1 }
            let whole = tensor.offset == 0 && elements == tensor.storage.count && tensor.shape.allSatisfy { $0 >= 0 }
            storages[key]?.name = path.isEmpty ? "tensor" : path.joined(separator: ".")
            storages[key]?.shape = whole ? tensor.shape.map { Int(clamping: $0) } : [Int(clamping: tensor.storage.count)]
        case .dict(let items):
            for item in items {
                guard let key = Self.pathComponent(item.key) else { continue }
                name(item.value, path: path + [key], seen: &seen)
            }
        case .list(let elements), .tuple(let elements):
            for (index, element) in elements.enumerated() { name(element, path: path + [String(index)], seen: &seen) }
        case .object(_, let arguments, let state, let items, let elements):
            // An object not built: its parts still name the tensors inside it.
            for (index, argument) in arguments.enumerated() { name(argument, path: path + [String(index)], seen: &seen) }
            if let state { name(state, path: path, seen: &seen) }
            name(.dict(items), path: path, seen: &seen)
            name(.list(elements), path: path, seen: &seen)
        default:
            break
        }
    }

    /// A dict key as a name component: strings as they are, integers in decimal.
    static func pathComponent(_ key: PickleValue) -> String? {
        switch key {
        case .string(let text): text
        case .int(let number): String(number)
        case .bool(let flag): flag ? "True" : "False"
        default: nil
        }
    }
}

extension OptimizerSummary {
    /// The summary of an optimizer state dict, or nil when `object` is not one.
    init?(_ object: PickleValue, scalar: (TorchStorageRecord) -> Double?) {
        guard case .dict = object, let state = object["state"], case .dict(let states) = state,
              case .list(let groupValues)? = object["param_groups"] else { return nil }
        var groups = [Group]()
        for value in groupValues {
            guard case .list(let paramValues)? = value["params"] else { return nil }
            let params = paramValues.compactMap { value -> Int? in
                if case .int(let number) = value { return Int(clamping: number) }
                return nil
            }
            guard params.count == paramValues.count else { return nil }
            var betas: [Double]?
            if case .tuple(let parts)? = value["betas"] ?? nil {
                betas = parts.compactMap(\.number)
            } else if case .list(let parts)? = value["betas"] ?? nil {
                betas = parts.compactMap(\.number)
            }
            var step: Double?
            if let first = params.first(where: { param in states.contains { $0.key == .int(Int64(param)) } }),
               let entry = states.first(where: { $0.key == .int(Int64(first)) })?.value {
                switch entry["step"] {
                case .tensor(let tensor)?: step = tensor.storage.count == 1 ? scalar(tensor.storage) : nil
                case let number?: step = number.number
                case nil: step = nil
                }
            }
            groups.append(Group(params: params, lr: value["lr"]?.number, betas: betas, eps: value["eps"]?.number,
                                weightDecay: value["weight_decay"]?.number, step: step))
        }
        self.groups = groups
    }
}
