extension Collection where Element: Sendable {
    /// `transform` of each element, at most `limit` running at once, in the collection's order. What reads
    /// many small objects whose time is mostly a round trip (a fresh machine's first listing of a remote's
    /// commit and index objects) uses it; the first error cancels the rest and is thrown.
    func concurrentMap<T: Sendable>(limit: Int, _ transform: @escaping @Sendable (Element) async throws -> T) async throws -> [T] {
        let items = Array(self)
        guard !items.isEmpty else { return [] }
        var results = [T?](repeating: nil, count: items.count)
        try await withThrowingTaskGroup(of: (Int, T).self) { group in
            var next = 0
            while next < Swift.min(Swift.max(1, limit), items.count) {
                let index = next
                group.addTask { (index, try await transform(items[index])) }
                next += 1
            }
            while let (index, value) = try await group.next() {
                results[index] = value
                if next < items.count {
                    let index = next
                    group.addTask { (index, try await transform(items[index])) }
                    next += 1
                }
            }
        }
        return results.map { $0! }
    }
}

/// Runs `body` until `deadline`: its result, or nil when the deadline came first, in which case `body`'s
/// task is cancelled (a transport's request is abandoned; one already sent may still complete, which the
/// caller's protocol allows for). A push's commit uses it: a commit that cannot be written within half the
/// grace period of its check is given up and checked again, never written late.
func untilDeadline<T: Sendable>(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try? await Task.sleep(until: deadline, clock: .continuous)
            return nil
        }
        defer { group.cancelAll() }
        while let result = try await group.next() {
            if let result { return result }
            // The sleep ended: the deadline passed, unless it was cancelled because the body returned.
            if ContinuousClock.now >= deadline { return nil }
        }
        return nil
    }
}
