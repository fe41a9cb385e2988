import Foundation

/// The pack files on disk: `packs/xx/*.pack`, walked without the catalogue (gc's orphans, repair's scan).
struct PackDirectory {
    let layout: StoreLayout

    /// A file in a fan-out folder whose name ends in `.pack`.
    struct Entry {
        /// Its id, or nil when its name is not a pack id.
        var id: PackID?
        var path: String
    }

    /// Every `*.pack` file under `packs/`, in name order.
    func entries() throws -> [Entry] {
        var out = [Entry]()
        for folder in try FileSystem.contents(of: layout.packsRoot).sorted() where FileSystem.isDirectory(layout.packsRoot + "/" + folder) {
            for name in try FileSystem.contents(of: layout.packsRoot + "/" + folder).sorted() where name.hasSuffix(".pack") {
                out.append(Entry(id: PackID(hex: String(name.dropLast(5))), path: layout.packsRoot + "/" + folder + "/" + name))
            }
        }
        return out
    }

    /// A file gc may remove: an uncatalogued pack or a temporary file, with its size.
    struct Orphan: Sendable, Equatable {
        var path: String
        var size: Int64
    }

    /// Pack files whose id is not in `known`, and temporary files, last modified more than `grace`
    /// seconds ago.
    func orphans(olderThan grace: Double, known: Set<PackID>) throws -> [Orphan] {
        var out = [Orphan]()
        let cutoff = Date().addingTimeInterval(-grace)
        func consider(_ path: String) {
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                  let modified = attributes[.modificationDate] as? Date, modified < cutoff,
                  let size = (attributes[.size] as? NSNumber)?.int64Value else { return }
            out.append(Orphan(path: path, size: size))
        }
        for entry in try entries() {
            if let id = entry.id, known.contains(id) { continue }
            consider(entry.path)
        }
        if FileSystem.isDirectory(layout.temporaryRoot) {
            for name in try FileSystem.contents(of: layout.temporaryRoot).sorted() { consider(layout.temporaryRoot + "/" + name) }
        }
        return out
    }
}
