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
