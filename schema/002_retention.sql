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

-- Files a part rule dropped from a kept checkpoint (drop-optimizer-after): the manifest still lists
-- them, but their chunks are no longer referenced and `get` leaves them out.
CREATE TABLE dropped_files (
    checkpoint_id BLOB NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    path          TEXT NOT NULL,
    part          TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, path)
) WITHOUT ROWID;

-- gc deletes references checkpoint by checkpoint; a second index on them, by digest, made sweeping a
-- large store ten times slower and served only rare lookups (which checkpoints need a damaged chunk),
-- which now scan instead.
DROP INDEX checkpoint_chunks_by_digest;
