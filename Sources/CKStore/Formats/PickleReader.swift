/// A value of a Python pickle, read as data.
///
/// Calls (`REDUCE`, `NEWOBJ`, `BUILD`) are never made: they stay values that say what would have been
/// called with what, except the few that only build data and that torch.save emits for every tensor
/// (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, `collections.OrderedDict`), which become
/// the tensor or dict they describe.
indirect enum PickleValue: Equatable, Sendable {
    case none
    case bool(Bool)
    case int(Int64)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case list([PickleValue])
    case tuple([PickleValue])
    /// Keys and values in pickle order (Python dicts keep insertion order).
    case dict([DictItem])
    case global(module: String, name: String)
    /// torch.save's persistent id for a storage: the zip entry `data/<key>` of the archive.
    case storage(TorchStorageRecord)
    /// A tensor built by `torch._utils._rebuild_tensor_v2` over a storage.
    case tensor(TorchTensorRecord)
    /// A call that was not made: the callable, its arguments, and what `BUILD`, `SETITEMS` and `APPENDS`
    /// would have given the object it returned.
    case object(callable: PickleValue, arguments: [PickleValue], state: PickleValue?, items: [DictItem], elements: [PickleValue])

    struct DictItem: Equatable, Sendable {
        var key: PickleValue
        var value: PickleValue
    }

    /// The value for string key `key` of a dict.
    subscript(key: String) -> PickleValue? {
        guard case .dict(let items) = self else { return nil }
        return items.first { $0.key == .string(key) }?.value
    }

    /// The value as a Double, for numbers.
    var number: Double? {
        switch self {
        case .int(let value): Double(value)
        case .float(let value): value
        default: nil
        }
    }
}

/// One storage as torch.save records it: `('storage', torch.FloatStorage, '<key>', '<location>', numel)`.
struct TorchStorageRecord: Equatable, Sendable {
    /// The storage class's name (`FloatStorage`), or `UntypedStorage` with the dtype in `dtype`.
    var type: String
    var key: String
    var location: String
    var count: Int64
}

/// A tensor over a storage: `_rebuild_tensor_v2(storage, offset, size, stride, …)`.
struct TorchTensorRecord: Equatable, Sendable {
    var storage: TorchStorageRecord
    var offset: Int64
    var shape: [Int64]
    var stride: [Int64]
}

/// Reads a pickle stream (protocols 0 to 5, as `torch.save` and `pickle.dump` write them) as data.
///
/// A stack machine over the opcodes with a memo, whose containers are shared references as in Python,
/// so that an object stored once and referenced twice (a dict filled after it was memoized) reads the
/// same as Python reads it. It never imports or calls anything: globals are names, calls are values.
/// Work is bounded by the input: each opcode consumes at least one byte, and turning the result into a
/// ``PickleValue`` tree stops at `maxNodes` nodes and `maxDepth` levels (shared references could
/// otherwise make a small pickle describe an exponentially large tree). Anything it does not understand
/// (an unknown opcode, a truncated argument, a stack underflow, a tree over the bounds) makes
/// ``read(_:)`` return nil; the storage records met before that point are still reported by
/// ``storages``.
struct PickleReader {
    static let maxNodes = 2_000_000
    static let maxDepth = 256

    /// Every storage record met, in order, whether or not the whole pickle could be read.
    private(set) var storages = [TorchStorageRecord]()

    /// The pickled object, or nil when the pickle is not one this reader understands.
    mutating func read(_ pickle: [UInt8]) -> PickleValue? {
        var machine = Machine(pickle: pickle)
        defer { for container in machine.registry.all { container.empty() } }
        let result = machine.run()
        storages = machine.storages
        guard let result else { return nil }
        var budget = Self.maxNodes
        return try? result.value(depth: 0, budget: &budget)
    }

    /// A value while the pickle is being read: containers are references, since later opcodes
    /// (`SETITEMS`, `APPENDS`, `BUILD`) fill them after they were memoized or nested.
    fileprivate enum Node {
        case scalar(PickleValue)
        case list(Container)
        case dict(Container)
        case tuple([Node])
        case object(Container)
        case mark
    }

    fileprivate final class Container {
        var elements = [Node]()
        var items = [(Node, Node)]()
        var callable: Node?
        var arguments = [Node]()
        var state: Node?

        /// A container registered with `registry`, which empties it once the read is over.
        init(_ registry: Registry) { registry.all.append(self) }

        func empty() {
            elements = []
            items = []
            callable = nil
            arguments = []
            state = nil
        }
    }

    /// Every container of one read. A pickle can put a container inside itself (through the memo), as
    /// Python can; here that is a reference cycle, which emptying them all breaks when the read ends
    /// (`make fuzz` found the leak).
    fileprivate final class Registry {
        var all = [Container]()
    }

    fileprivate struct Machine {
        let pickle: [UInt8]
        let registry = Registry()
        var position = 0
        var stack = [Node]()
        var marks = [Int]()
        var memo = [Int: Node]()
        var storages = [TorchStorageRecord]()

        init(pickle: [UInt8]) { self.pickle = pickle }

        /// The width of the little-endian length before the bytes of each length-prefixed opcode.
        static let lengthWidths: [UInt8: Int] = [
            0x58: 4, 0x8d: 8, 0x8c: 1, 0x54: 4, 0x55: 1,   // strings
            0x42: 4, 0x43: 1, 0x8e: 8, 0x96: 8,            // bytes
        ]

        mutating func byte() -> UInt8? {
            guard position < pickle.count else { return nil }
            defer { position += 1 }
            return pickle[position]
        }

        mutating func bytes(_ count: Int) -> ArraySlice<UInt8>? {
            guard count >= 0, count <= pickle.count - position else { return nil }
            defer { position += count }
            return pickle[position..<(position + count)]
        }

        /// An unsigned little-endian integer of `count` bytes (at most 8).
        mutating func unsigned(_ count: Int) -> UInt64? {
            guard let slice = bytes(count) else { return nil }
            return slice.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }

        /// A length prefix that fits what is left of the pickle.
        mutating func length(_ count: Int) -> Int? {
            guard let value = unsigned(count), value <= UInt64(pickle.count - position) else { return nil }
            return Int(value)
        }

        mutating func line() -> String? {
            guard let end = pickle[position...].firstIndex(of: 0x0a) else { return nil }
            defer { position = end + 1 }
            var text = pickle[position..<end]
            if text.last == 0x0d { text = text.dropLast() }
            return String(decoding: text, as: UTF8.self)
        }

        mutating func pop() -> Node? {
            guard let top = stack.last, !isMark(top) else { return nil }
            return stack.removeLast()
        }

        mutating func popToMark() -> [Node]? {
            guard let mark = marks.popLast(), mark <= stack.count else { return nil }
            defer { stack.removeSubrange(mark...) }
            return Array(stack[mark...])
        }

        func isMark(_ node: Node) -> Bool {
            if case .mark = node { return true }
            return false
        }

        mutating func push(_ value: PickleValue) { stack.append(.scalar(value)) }

        /// A signed little-endian integer of `count` bytes (LONG1, LONG4), when it fits 64 bits.
        mutating func signed(_ count: Int) -> Int64? {
            guard let slice = bytes(count) else { return nil }
            guard !slice.isEmpty else { return 0 }
            guard slice.count <= 8 else {
                // Wider than 64 bits: fits only as sign extension of the low 8 bytes.
                let low = slice.prefix(8), high = slice.dropFirst(8)
                let negative = (low.last ?? 0) & 0x80 != 0
                guard high.allSatisfy({ $0 == (negative ? 0xff : 0) }) else { return nil }
                return Int64(bitPattern: low.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
            }
            var value = slice.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            if slice.count < 8, (slice.last ?? 0) & 0x80 != 0 { value |= ~UInt64(0) << (8 * UInt64(slice.count)) }
            return Int64(bitPattern: value)
        }

        /// Runs to STOP; the object on top of the stack, or nil.
        mutating func run() -> Node? {
            while let opcode = byte() {
                guard step(opcode) else { return nil }
                if opcode == 0x2e { return stack.count == 1 ? stack[0] : nil }
            }
            return nil
        }

        // swiftlint:disable:next cyclomatic_complexity function_body_length
        mutating func step(_ opcode: UInt8) -> Bool {
            switch opcode {
            case 0x80: return byte() != nil                                                   // PROTO
            case 0x95: return bytes(8) != nil                                                 // FRAME
            case 0x2e: return true                                                            // STOP
            case 0x28: marks.append(stack.count); stack.append(.mark)                         // MARK
            case 0x4e: push(.none)                                                            // NONE
            case 0x88: push(.bool(true))                                                      // NEWTRUE
            case 0x89: push(.bool(false))                                                     // NEWFALSE
            case 0x4b: guard let v = unsigned(1) else { return false }; push(.int(Int64(v)))  // BININT1
            case 0x4d: guard let v = unsigned(2) else { return false }; push(.int(Int64(v)))  // BININT2
            case 0x4a:                                                                        // BININT
                guard let v = unsigned(4) else { return false }
                push(.int(Int64(Int32(truncatingIfNeeded: v))))
            case 0x8a:                                                                        // LONG1
                guard let count = length(1), let v = signed(count) else { return false }
                push(.int(v))
            case 0x8b:                                                                        // LONG4
                guard let count = length(4), let v = signed(count) else { return false }
                push(.int(v))
            case 0x49:                                                                        // INT (text)
                guard let text = line() else { return false }
                if text == "00" { push(.bool(false)) } else if text == "01" { push(.bool(true)) } else {
                    guard let v = Int64(text) else { return false }
                    push(.int(v))
                }
            case 0x4c:                                                                        // LONG (text)
                guard let text = line(), let v = Int64(text.hasSuffix("L") ? String(text.dropLast()) : text) else { return false }
                push(.int(v))
            case 0x47:                                                                        // BINFLOAT (big-endian)
                guard let slice = bytes(8) else { return false }
                push(.float(Double(bitPattern: slice.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })))
            case 0x46:                                                                        // FLOAT (text)
                guard let text = line(), let v = Double(text) else { return false }
                push(.float(v))
            case 0x58, 0x8d, 0x8c, 0x54, 0x55:              // BINUNICODE, BINUNICODE8, SHORT_BINUNICODE, BINSTRING, SHORT_BINSTRING
                guard let count = length(Self.lengthWidths[opcode] ?? 0), let text = bytes(count) else { return false }
                push(.string(String(decoding: text, as: UTF8.self)))
            case 0x56:                                                                        // UNICODE (text; raw-unicode-escape, read as is)
                guard let text = line() else { return false }
                push(.string(text))
            case 0x53:                                                                        // STRING (quoted text)
                guard let text = line(), text.count >= 2, let quote = text.first, quote == "'" || quote == "\"", text.last == quote else { return false }
                push(.string(String(text.dropFirst().dropLast())))
            case 0x42, 0x43, 0x8e, 0x96:                    // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                guard let count = length(Self.lengthWidths[opcode] ?? 0), let data = bytes(count) else { return false }
                push(.bytes(Array(data)))
            case 0x63:                                                                        // GLOBAL
                guard let module = line(), let name = line() else { return false }
                push(.global(module: module, name: name))
            case 0x93:                                                                        // STACK_GLOBAL
                guard let name = pop(), let module = pop(),
                      case .scalar(.string(let moduleName)) = module, case .scalar(.string(let globalName)) = name else { return false }
                push(.global(module: moduleName, name: globalName))
            case 0x29: stack.append(.tuple([]))                                               // EMPTY_TUPLE
            case 0x5d: stack.append(.list(Container(registry)))                                       // EMPTY_LIST
            case 0x7d: stack.append(.dict(Container(registry)))                                       // EMPTY_DICT
            case 0x8f: stack.append(.list(Container(registry)))                                       // EMPTY_SET (read as a list)
            case 0x74:                                                                        // TUPLE
                guard let items = popToMark() else { return false }
                stack.append(.tuple(Array(items.dropFirst())))
            case 0x85, 0x86, 0x87:                                                            // TUPLE1, TUPLE2, TUPLE3
                var items = [Node]()
                for _ in 0..<Int(opcode - 0x84) {
                    guard let item = pop() else { return false }
                    items.insert(item, at: 0)
                }
                stack.append(.tuple(items))
            case 0x6c:                                                                        // LIST
                guard let items = popToMark() else { return false }
                let list = Container(registry)
                list.elements = Array(items.dropFirst())
                stack.append(.list(list))
            case 0x64:                                                                        // DICT
                guard let items = popToMark(), items.count % 2 == 1 else { return false }
                let dict = Container(registry)
                dict.items = stride(from: 1, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) }
                stack.append(.dict(dict))
            case 0x91:                                                                        // FROZENSET
                guard let items = popToMark() else { return false }
                stack.append(.tuple(Array(items.dropFirst())))
            case 0x61:                                                                        // APPEND
                guard let item = pop(), let target = stack.last, append([item], to: target) else { return false }
            case 0x65, 0x90:                                                                  // APPENDS, ADDITEMS
                guard let items = popToMark(), let target = stack.last, append(Array(items.dropFirst()), to: target) else { return false }
            case 0x73:                                                                        // SETITEM
                guard let value = pop(), let key = pop(), let target = stack.last, set([(key, value)], on: target) else { return false }
            case 0x75:                                                                        // SETITEMS
                guard let items = popToMark(), items.count % 2 == 1, let target = stack.last else { return false }
                guard set(stride(from: 1, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) }, on: target) else { return false }
            case 0x71:                                                                        // BINPUT
                guard let key = unsigned(1), let top = stack.last, !isMark(top) else { return false }
                memo[Int(key)] = top
            case 0x72:                                                                        // LONG_BINPUT
                guard let key = unsigned(4), let top = stack.last, !isMark(top) else { return false }
                memo[Int(key)] = top
            case 0x70:                                                                        // PUT
                guard let text = line(), let key = Int(text), let top = stack.last, !isMark(top) else { return false }
                memo[key] = top
            case 0x94:                                                                        // MEMOIZE
                guard let top = stack.last, !isMark(top) else { return false }
                memo[memo.count] = top
            case 0x68:                                                                        // BINGET
                guard let key = unsigned(1), let value = memo[Int(key)] else { return false }
                stack.append(value)
            case 0x6a:                                                                        // LONG_BINGET
                guard let key = unsigned(4), let value = memo[Int(key)] else { return false }
                stack.append(value)
            case 0x67:                                                                        // GET
                guard let text = line(), let key = Int(text), let value = memo[key] else { return false }
                stack.append(value)
            case 0x30: return pop() != nil                                                    // POP
            case 0x31: return popToMark() != nil                                              // POP_MARK
            case 0x32:                                                                        // DUP
                guard let top = stack.last, !isMark(top) else { return false }
                stack.append(top)
            case 0x51:                                                                        // BINPERSID
                guard let id = pop() else { return false }
                stack.append(persistent(id))
            case 0x52:                                                                        // REDUCE
                guard let arguments = pop(), let callable = pop(), case .tuple(let parts) = arguments else { return false }
                stack.append(call(callable, parts))
            case 0x81:                                                                        // NEWOBJ
                guard let arguments = pop(), let type = pop(), case .tuple(let parts) = arguments else { return false }
                stack.append(call(type, parts))
            case 0x92:                                                                        // NEWOBJ_EX
                guard pop() != nil, let arguments = pop(), let type = pop(), case .tuple(let parts) = arguments else { return false }
                stack.append(call(type, parts))
            case 0x62:                                                                        // BUILD
                guard let state = pop(), let target = stack.last else { return false }
                switch target {
                case .object(let object): object.state = state
                case .dict, .list, .scalar, .tuple: break   // an OrderedDict's attributes, say: not data we use
                case .mark: return false
                }
            default:
                return false
            }
            return true
        }

        func append(_ items: [Node], to target: Node) -> Bool {
            switch target {
            case .list(let list), .object(let list): list.elements += items; return true
            default: return false
            }
        }

        func set(_ items: [(Node, Node)], on target: Node) -> Bool {
            switch target {
            case .dict(let dict), .object(let dict): dict.items += items; return true
            default: return false
            }
        }

        /// torch.save's persistent ids name storages; any other stays an object.
        mutating func persistent(_ id: Node) -> Node {
            if case .tuple(let parts) = id, parts.count >= 5, case .scalar(.string("storage")) = parts[0],
               case .scalar(.global(_, let type)) = parts[1], case .scalar(.string(let key)) = parts[2],
               case .scalar(.string(let location)) = parts[3], case .scalar(.int(let count)) = parts[4] {
                let record = TorchStorageRecord(type: type, key: key, location: location, count: count)
                storages.append(record)
                return .scalar(.storage(record))
            }
            let object = Container(registry)
            object.callable = .scalar(.global(module: "pickle", name: "persistent_load"))
            object.arguments = [id]
            return .object(object)
        }

        /// A call, never made: the data-only constructors torch.save uses become their data.
        func call(_ callable: Node, _ arguments: [Node]) -> Node {
            if case .scalar(.global(let module, let name)) = callable {
                switch (module, name) {
                case ("collections", "OrderedDict") where arguments.isEmpty:
                    return .dict(Container(registry))
                case ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"):
                    if arguments.count >= 4, case .scalar(.storage(let storage)) = arguments[0], case .scalar(.int(let offset)) = arguments[1],
                       let shape = integers(arguments[2]), let stride = integers(arguments[3]) {
                        return .scalar(.tensor(TorchTensorRecord(storage: storage, offset: offset, shape: shape, stride: stride)))
                    }
                case ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"):
                    if let data = arguments.first, case .scalar(.tensor) = data { return data }
                default:
                    break
                }
            }
            let object = Container(registry)
            object.callable = callable
            object.arguments = arguments
            return .object(object)
        }

        func integers(_ node: Node) -> [Int64]? {
            guard case .tuple(let parts) = node else { return nil }
            var values = [Int64]()
            for part in parts {
                guard case .scalar(.int(let value)) = part else { return nil }
                values.append(value)
            }
            return values
        }
    }
}

extension PickleReader.Node {
    /// The tree this node describes, within `budget` nodes and `maxDepth` levels.
    fileprivate func value(depth: Int, budget: inout Int) throws -> PickleValue {
        budget -= 1
        guard budget >= 0, depth <= PickleReader.maxDepth else { throw PickleReader.BoundsExceeded() }
        func values(_ nodes: [PickleReader.Node]) throws -> [PickleValue] {
            try nodes.map { try $0.value(depth: depth + 1, budget: &budget) }
        }
        func items(_ pairs: [(PickleReader.Node, PickleReader.Node)]) throws -> [PickleValue.DictItem] {
            try pairs.map { PickleValue.DictItem(key: try $0.0.value(depth: depth + 1, budget: &budget), value: try $0.1.value(depth: depth + 1, budget: &budget)) }
        }
        switch self {
        case .scalar(let value): return value
        case .list(let list): return .list(try values(list.elements))
        case .tuple(let parts): return .tuple(try values(parts))
        case .dict(let dict): return .dict(try items(dict.items))
        case .object(let object):
            return .object(
                callable: try object.callable.map { try $0.value(depth: depth + 1, budget: &budget) } ?? .none,
                arguments: try values(object.arguments),
                state: try object.state.map { try $0.value(depth: depth + 1, budget: &budget) },
                items: try items(object.items), elements: try values(object.elements)
            )
        case .mark: throw PickleReader.BoundsExceeded()
        }
    }
}

extension PickleReader {
    fileprivate struct BoundsExceeded: Error {}
}
