import Synchronization

/// The catalogue connection and the lock that serializes its use.
final class LockedCatalogue: @unchecked Sendable {
    // `catalogue` is only touched while `lock` is held; each call holds it only for its SQL.
    private let lock = Mutex<Void>(())
    private let catalogue: Catalogue

    init(_ catalogue: Catalogue) { self.catalogue = catalogue }

    func with<T: Sendable>(_ body: (Catalogue) throws -> T) throws -> T {
        try lock.withLock { _ in try body(catalogue) }
    }
}
