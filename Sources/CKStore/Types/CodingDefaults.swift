/// Property wrappers for the three rules ckstore's JSON keeps beyond what `Codable` synthesises, so that a
/// type states the rule on the field instead of writing `init(from:)` and `encode(to:)` by hand:
///
/// - ``DefaultWhenMissing``: a field added after objects were written decodes as its empty value when the
///   key is absent (an older policy without `keep_tags`), and is always written;
/// - ``OmittedWhenEmpty``: the same, and the key is left out while the value is empty (a frame's `i`, a
///   remote's `virtual_hosted`), which keeps objects short and lets older readers read them;
/// - ``NullWhenNil``: an optional written as an explicit `null` rather than left out, where null means
///   something ("unbounded") that a reader should not have to infer from a missing key.
///
/// The keyed containers' overloads below are what make a missing key acceptable: synthesised code calls
/// `decode(_:forKey:)` and `encode(_:forKey:)`, and these more specific overloads answer for the wrappers.

/// A value with an empty form that a missing key stands for.
public protocol EmptyDefaultable: Codable {
    static var emptyValue: Self { get }
    var isEmptyValue: Bool { get }
}

extension Array: EmptyDefaultable where Element: Codable {
    public static var emptyValue: Self { [] }
    public var isEmptyValue: Bool { isEmpty }
}

extension Dictionary: EmptyDefaultable where Key: Codable, Value: Codable {
    public static var emptyValue: Self { [:] }
    public var isEmptyValue: Bool { isEmpty }
}

extension Bool: EmptyDefaultable {
    public static var emptyValue: Bool { false }
    public var isEmptyValue: Bool { !self }
}

/// A wrapper whose key may be missing, standing for its value's empty form.
public protocol DefaultingCodable: Codable {
    associatedtype Value: EmptyDefaultable
    var wrappedValue: Value { get }
    init(wrappedValue: Value)
}

extension DefaultingCodable {
    public init(from decoder: any Decoder) throws { self.init(wrappedValue: try Value(from: decoder)) }
    public func encode(to encoder: any Encoder) throws { try wrappedValue.encode(to: encoder) }
}

/// Decodes a missing key as the empty value; always encodes.
@propertyWrapper
public struct DefaultWhenMissing<Value: EmptyDefaultable>: DefaultingCodable {
    public var wrappedValue: Value
    public init(wrappedValue: Value) { self.wrappedValue = wrappedValue }
}

/// Decodes a missing key as the empty value; leaves the key out while the value is empty.
@propertyWrapper
public struct OmittedWhenEmpty<Value: EmptyDefaultable>: DefaultingCodable {
    public var wrappedValue: Value
    public init(wrappedValue: Value) { self.wrappedValue = wrappedValue }
}

/// Writes nil as an explicit `null`; decodes a missing key as nil.
@propertyWrapper
public struct NullWhenNil<Wrapped: Codable>: Codable {
    public var wrappedValue: Wrapped?

    public init(wrappedValue: Wrapped?) { self.wrappedValue = wrappedValue }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        wrappedValue = container.decodeNil() ? nil : try container.decode(Wrapped.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}

extension DefaultWhenMissing: Sendable where Value: Sendable {}
extension OmittedWhenEmpty: Sendable where Value: Sendable {}
extension NullWhenNil: Sendable where Wrapped: Sendable {}
extension DefaultWhenMissing: Equatable where Value: Equatable {}
extension DefaultWhenMissing: Hashable where Value: Hashable {}
extension OmittedWhenEmpty: Equatable where Value: Equatable {}
extension OmittedWhenEmpty: Hashable where Value: Hashable {}
extension NullWhenNil: Equatable where Wrapped: Equatable {}
extension NullWhenNil: Hashable where Wrapped: Hashable {}

extension KeyedDecodingContainer {
    public func decode<Wrapper: DefaultingCodable>(_ type: Wrapper.Type, forKey key: Key) throws -> Wrapper {
        Wrapper(wrappedValue: try decodeIfPresent(Wrapper.Value.self, forKey: key) ?? .emptyValue)
    }

    public func decode<Wrapped>(_ type: NullWhenNil<Wrapped>.Type, forKey key: Key) throws -> NullWhenNil<Wrapped> {
        NullWhenNil(wrappedValue: try decodeIfPresent(Wrapped.self, forKey: key))
    }
}

extension KeyedEncodingContainer {
    public mutating func encode<Value>(_ value: OmittedWhenEmpty<Value>, forKey key: Key) throws {
        if !value.wrappedValue.isEmptyValue { try encode(value.wrappedValue, forKey: key) }
    }
}
