/// The pickle `torch.save(optimizer.state_dict())` writes for AdamW, with the opcodes torch emits
/// (protocol 2): `{'state': {i: {'step': tensor, 'exp_avg': tensor, 'exp_avg_sq': tensor}},
/// 'param_groups': [{'lr', 'betas', 'eps', 'weight_decay', 'params'}]}`, each tensor
/// `torch._utils._rebuild_tensor_v2` over a persistent storage id `('storage', torch.FloatStorage, key,
/// 'cpu', numel)`. Storage keys count up from 0 in the order step, exp_avg, exp_avg_sq per parameter, as
/// the storages are added to the archive.
public struct OptimizerPickle: Sendable {
    public struct Group: Sendable {
        public var params: [Int]
        public var lr: Double
        public var betas: (Double, Double)
        public var eps: Double
        public var weightDecay: Double

        public init(params: [Int], lr: Double, betas: (Double, Double) = (0.9, 0.999), eps: Double = 1e-8, weightDecay: Double = 0.01) {
            (self.params, self.lr, self.betas, self.eps, self.weightDecay) = (params, lr, betas, eps, weightDecay)
        }
    }

    /// Per parameter (in state order): its number and the shape of its moments.
    public var parameters: [(param: Int, shape: [Int])]
    public var groups: [Group]

    public init(parameters: [(param: Int, shape: [Int])], groups: [Group]) {
        self.parameters = parameters
        self.groups = groups
    }

    public func bytes() -> [UInt8] {
        var out: [UInt8] = [0x80, 0x02]
        func op(_ code: UInt8) { out.append(code) }
        func int(_ value: Int) {
            if (0..<256).contains(value) { op(0x4b); out.append(UInt8(value)) } else { op(0x4a); out += withUnsafeBytes(of: Int32(value).littleEndian, Array.init) }
        }
        func string(_ text: String) {
            let utf8 = Array(text.utf8)
            op(0x58); out += withUnsafeBytes(of: UInt32(utf8.count).littleEndian, Array.init); out += utf8
        }
        func float(_ value: Double) { op(0x47); out += withUnsafeBytes(of: value.bitPattern.bigEndian, Array.init) }
        func global(_ module: String, _ name: String) { op(0x63); out += Array("\(module)\n\(name)\n".utf8) }
        var key = 0
        func tensor(_ shape: [Int]) {
            let count = shape.reduce(1, *)
            global("torch._utils", "_rebuild_tensor_v2")
            op(0x28)                                                // MARK: the arguments
            op(0x28); string("storage"); global("torch", "FloatStorage"); string(String(key)); string("cpu"); int(count); op(0x74)
            op(0x51)                                                // BINPERSID
            key += 1
            int(0)                                                  // storage offset
            op(0x28); for dimension in shape { int(dimension) }; op(0x74)
            var stride = [Int](repeating: 1, count: shape.count)
            for index in stride.indices.reversed().dropFirst() { stride[index] = stride[index + 1] * shape[index + 1] }
            op(0x28); for step in stride { int(step) }; op(0x74)
            op(0x89)                                                // requires_grad False
            global("collections", "OrderedDict"); op(0x29); op(0x52) // OrderedDict()
            op(0x74); op(0x52)                                      // TUPLE, REDUCE
        }
        op(0x7d)                                                    // the state dict
        string("state"); op(0x7d)
        for (param, shape) in parameters {
            int(param); op(0x7d)
            string("step"); tensor([])
            op(0x73)
            string("exp_avg"); tensor(shape); op(0x73)
            string("exp_avg_sq"); tensor(shape); op(0x73)
            op(0x73)                                                // state[param] = {...}
        }
        op(0x73)                                                    // ['state'] = {...}
        string("param_groups"); op(0x5d)
        for group in groups {
            op(0x7d)
            string("lr"); float(group.lr); op(0x73)
            string("betas"); float(group.betas.0); float(group.betas.1); op(0x86); op(0x73)
            string("eps"); float(group.eps); op(0x73)
            string("weight_decay"); float(group.weightDecay); op(0x73)
            string("params"); op(0x5d); for param in group.params { int(param); op(0x61) }; op(0x73)
            op(0x61)                                                // APPEND the group
        }
        op(0x73)                                                    // ['param_groups'] = [...]
        op(0x2e)
        return out
    }
}
