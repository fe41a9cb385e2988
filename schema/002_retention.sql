-- ckstore catalogue, version 2: retention policies, pins and dropped parts.

-- A run's retention policy as JSON (RetentionPolicy); scope '*' is the store-wide default.
CREATE TABLE policies (
    scope      TEXT PRIMARY KEY,
    policy     TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;

-- Checkpoints no retention rule may delete (`ckstore pin`); `rm` needs --force for them.
CREATE TABLE pins (
    checkpoint_id BLOB PRIMARY KEY REFERENCES checkpoints(id) ON DELETE CASCADE,
    pinned_at     REAL NOT NULL
) WITHOUT ROWID;

-- What a part rule dropped from a kept checkpoint (drop-optimizer-after): whole files (tensor '') or
-- single tensors of a safetensors file. The manifest still lists them, but their chunks are no longer
-- referenced; `get` leaves dropped files out and restores a file without its dropped tensors.
CREATE TABLE dropped_files (
    checkpoint_id BLOB NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    path          TEXT NOT NULL,
    tensor        TEXT NOT NULL DEFAULT '',
    part          TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, path, tensor)
) WITHOUT ROWID;

-- Checkpoint references without the foreign key and the index by digest that version 1 gave them:
-- checking the key (a lookup of the checkpoint for every reference deleted) and updating the index
-- made sweeping a large store several times slower. gc and rm delete a checkpoint's references
-- themselves; which checkpoints need a damaged chunk is answered by one scan.
CREATE TABLE checkpoint_chunks_v2 (
    checkpoint_id BLOB NOT NULL,
    digest        BLOB NOT NULL,
    uses          INTEGER NOT NULL,
    PRIMARY KEY (checkpoint_id, digest)
) WITHOUT ROWID;
INSERT INTO checkpoint_chunks_v2 (checkpoint_id, digest, uses) SELECT checkpoint_id, digest, uses FROM checkpoint_chunks;
DROP TABLE checkpoint_chunks;
ALTER TABLE checkpoint_chunks_v2 RENAME TO checkpoint_chunks;

-- Likewise the index of chunks by pack: gc finds the frames of the packs it rewrites or retires in one
-- scan, and every chunk it deletes no longer has a second B-tree entry to remove.
DROP INDEX chunks_by_pack;
