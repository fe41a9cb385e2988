/// Checks of paths that come from manifests (invariant I-7: nothing is written outside the target).
public enum RelativePath {
    /// The normalized form of a `/`-separated relative path, or nil if it is absolute, empty, contains a
    /// NUL, or climbs above its root with `..`.
    public static func normalize(_ path: String) -> String? {
        guard !path.isEmpty, !path.hasPrefix("/"), !path.contains("\0") else { return nil }
        var parts = [Substring]()
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..":
                guard !parts.isEmpty else { return nil }
                parts.removeLast()
            default: parts.append(part)
            }
        }
        return parts.isEmpty ? nil : parts.joined(separator: "/")
    }

    /// Whether the link at `path` with `target` resolves inside the tree when the tree's own `links` (path →
    /// target) are followed on the way, as the kernel would once they are restored. An absolute target, a
    /// climb above the root or more than 40 links in a row (a loop) is outside.
    public static func linkStaysInside(_ path: String, target: String, links: [String: String]) -> Bool {
        var resolved = path.split(separator: "/").dropLast().map(String.init)
        var pending = target.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        var hops = 0
        guard !target.hasPrefix("/") else { return false }
        while !pending.isEmpty {
            let component = pending.removeFirst()
            switch component {
            case "", ".": continue
            case "..":
                guard !resolved.isEmpty else { return false }
                resolved.removeLast()
            default:
                resolved.append(component)
                guard let next = links[resolved.joined(separator: "/")] else { continue }
                hops += 1
                guard hops <= 40, !next.hasPrefix("/") else { return false }
                resolved.removeLast()
                pending = next.split(separator: "/", omittingEmptySubsequences: false).map(String.init) + pending
            }
        }
        return true
    }

    /// True when `path` is already normal: relative, no `.`/`..`/empty components. Manifests only hold these.
    public static func isSafe(_ path: String) -> Bool {
        guard !path.isEmpty, !path.hasPrefix("/"), !path.contains("\0") else { return false }
        return path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." }
    }
}
