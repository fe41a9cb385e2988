/// Reads the element type of each storage from a `torch.save` pickle (`data.pkl`) without executing it.
///
/// torch.save writes each tensor's storage as a persistent id, the tuple
/// `('storage', torch.FloatStorage, '<key>', '<location>', numel)` followed by `BINPERSID`; the storage's
/// bytes are the zip entry `<archive>/data/<key>`. This walks the opcodes with a stack that knows only
/// strings, globals, integers, marks and tuples, enough to read those tuples, memo references included.
/// An opcode it does not know ends the walk with what it found; nothing here can run code or allocate
/// more than the pickle's size.
enum TorchPickle {
    private indirect enum Value {
        case string(String)
        case global(module: String, name: String)
        case int(Int64)
        case tuple([Value])
        case other
    }

    /// Bytes per element of torch's storage types.
    static let storageWidths: [String: Int] = [
        "FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
        "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
        // Complex numbers are pairs of floats: grouped by their float parts.
        "ComplexFloatStorage": 4, "ComplexDoubleStorage": 8,
    ]

    /// The element width of each storage key that names a known storage type.
    static func storageElementWidths(_ pickle: [UInt8]) -> [String: Int] {
        var widths = [String: Int]()
        var stack = [Value]()
        var marks = [Int]()
        var memo = [Int: Value]()
        var position = 0

        func byte() -> UInt8? {
            guard position < pickle.count else { return nil }
            defer { position += 1 }
            return pickle[position]
        }
        func bytes(_ count: Int) -> ArraySlice<UInt8>? {
            guard count >= 0, position + count <= pickle.count else { return nil }
            defer { position += count }
            return pickle[position..<(position + count)]
        }
        func little(_ count: Int) -> Int64? {
            guard let slice = bytes(count) else { return nil }
            return slice.reversed().reduce(Int64(0)) { $0 << 8 | Int64($1) }
        }
        func line() -> String? {
            guard let end = pickle[position...].firstIndex(of: 0x0a) else { return nil }
            defer { position = end + 1 }
            return String(decoding: pickle[position..<end], as: UTF8.self)
        }
        func popToMark() -> [Value]? {
            guard let mark = marks.popLast(), mark <= stack.count else { return nil }
            defer { stack.removeSubrange(mark...) }
            return Array(stack[mark...])
        }
        func pop(_ count: Int) -> [Value]? {
            guard stack.count >= count else { return nil }
            defer { stack.removeLast(count) }
            return Array(stack.suffix(count))
        }

        walk: while let opcode = byte() {
            switch opcode {
            case 0x80: guard byte() != nil else { break walk }                       // PROTO
            case 0x95: guard bytes(8) != nil else { break walk }                     // FRAME
            case 0x2e: break walk                                                    // STOP
            case 0x28: marks.append(stack.count)                                     // MARK
            case 0x58, 0x42:                                                         // BINUNICODE, BINBYTES
                guard let length = little(4), let text = bytes(Int(length)) else { break walk }
                stack.append(.string(String(decoding: text, as: UTF8.self)))
            case 0x8c, 0x55, 0x43:                                                   // SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES
                guard let length = byte(), let text = bytes(Int(length)) else { break walk }
                stack.append(.string(String(decoding: text, as: UTF8.self)))
            case 0x54:                                                               // BINSTRING
                guard let length = little(4), let text = bytes(Int(length)) else { break walk }
                stack.append(.string(String(decoding: text, as: UTF8.self)))
            case 0x63:                                                               // GLOBAL module\nname\n
                guard let module = line(), let name = line() else { break walk }
                stack.append(.global(module: module, name: name))
            case 0x93:                                                               // STACK_GLOBAL
                guard let pair = pop(2), case .string(let module) = pair[0], case .string(let name) = pair[1] else { break walk }
                stack.append(.global(module: module, name: name))
            case 0x4b: guard let value = little(1) else { break walk }; stack.append(.int(value))   // BININT1
            case 0x4d: guard let value = little(2) else { break walk }; stack.append(.int(value))   // BININT2
            case 0x4a:                                                               // BININT (signed)
                guard let value = little(4) else { break walk }
                stack.append(.int(Int64(Int32(truncatingIfNeeded: value))))
            case 0x8a:                                                               // LONG1
                guard let length = byte(), length <= 8, let value = little(Int(length)) else { break walk }
                stack.append(.int(value))
            case 0x71: guard let key = byte(), let top = stack.last else { break walk }; memo[Int(key)] = top                 // BINPUT
            case 0x72: guard let key = little(4), let top = stack.last else { break walk }; memo[Int(key)] = top              // LONG_BINPUT
            case 0x94: guard let top = stack.last else { break walk }; memo[memo.count] = top                                 // MEMOIZE
            case 0x68: guard let key = byte() else { break walk }; stack.append(memo[Int(key)] ?? .other)                     // BINGET
            case 0x6a: guard let key = little(4) else { break walk }; stack.append(memo[Int(key)] ?? .other)                  // LONG_BINGET
            case 0x74: guard let items = popToMark() else { break walk }; stack.append(.tuple(items))                          // TUPLE
            case 0x85: guard let items = pop(1) else { break walk }; stack.append(.tuple(items))                               // TUPLE1
            case 0x86: guard let items = pop(2) else { break walk }; stack.append(.tuple(items))                               // TUPLE2
            case 0x87: guard let items = pop(3) else { break walk }; stack.append(.tuple(items))                               // TUPLE3
            case 0x51:                                                               // BINPERSID
                guard let id = pop(1)?.first else { break walk }
                if case .tuple(let parts) = id, parts.count >= 3, case .string("storage") = parts[0],
                   case .global(_, let type) = parts[1], case .string(let key) = parts[2], let width = storageWidths[type] {
                    widths[key] = width
                }
                stack.append(.other)
            case 0x29, 0x7d, 0x5d, 0x4e, 0x88, 0x89: stack.append(.other)            // EMPTY_TUPLE, EMPTY_DICT, EMPTY_LIST, NONE, NEWTRUE, NEWFALSE
            case 0x47: guard bytes(8) != nil else { break walk }; stack.append(.other)                                          // BINFLOAT
            case 0x52, 0x62: guard pop(2) != nil else { break walk }; stack.append(.other)                                      // REDUCE, BUILD (pops 2, pushes 1)
            case 0x81: guard pop(2) != nil else { break walk }; stack.append(.other)                                            // NEWOBJ
            case 0x73: guard pop(2) != nil else { break walk }                                                                  // SETITEM
            case 0x61: guard pop(1) != nil else { break walk }                                                                  // APPEND
            case 0x75, 0x65: guard popToMark() != nil else { break walk }                                                       // SETITEMS, APPENDS
            case 0x30: guard pop(1) != nil else { break walk }                                                                  // POP
            case 0x31: guard popToMark() != nil else { break walk }                                                             // POP_MARK
            case 0x32: guard let top = stack.last else { break walk }; stack.append(top)                                        // DUP
            default: break walk
            }
        }
        return widths
    }
}
