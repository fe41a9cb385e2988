-- ckstore catalogue, version 1.
-- The catalogue is an index over the packs (DESIGN.md I-2): every row here can be rebuilt from pack
-- trailers and manifest frames. Digests and checkpoint ids are 32-byte BLOBs (SHA-256).

-- Sealed pack files under packs/ab/<id>.pack.
CREATE TABLE packs (
    id          TEXT PRIMARY KEY,          -- 32 hex characters
    size        INTEGER NOT NULL,          -- bytes on disk, trailer included
    frame_count INTEGER NOT NULL,
    created_at  REAL NOT NULL              -- unix seconds
) WITHOUT ROWID;

-- One row per stored frame: file chunks (kind 0) and manifests (kind 1).
CREATE TABLE chunks (
    digest        BLOB PRIMARY KEY,        -- SHA-256 of the decoded bytes
    pack_id       TEXT NOT NULL REFERENCES packs(id),
    offset        INTEGER NOT NULL,        -- of the frame header in the pack
    stored_length INTEGER NOT NULL,        -- payload bytes (the frame adds a 96-byte header)
    raw_length    INTEGER NOT NULL,
    encoding      INTEGER NOT NULL,        -- FrameEncoding raw value
    kind          INTEGER NOT NULL,        -- FrameKind raw value
    base          BLOB                     -- delta base digest, when the encoding has one
) WITHOUT ROWID;
CREATE INDEX chunks_by_pack ON chunks(pack_id);

CREATE TABLE runs (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);

-- One row per committed checkpoint. A row exists only once every byte it needs is durable (I-5).
CREATE TABLE checkpoints (
    id                 BLOB PRIMARY KEY,   -- SHA-256 of the manifest = the manifest frame's digest
    run_id             INTEGER NOT NULL REFERENCES runs(id),
    step               INTEGER NOT NULL,
    epoch              REAL,
    created_at         REAL NOT NULL,
    logical_bytes      INTEGER NOT NULL,   -- sum of file sizes
    stored_bytes_added INTEGER NOT NULL,   -- frame bytes this checkpoint's put wrote
    chunk_count        INTEGER NOT NULL,   -- chunk references in the manifest, repeats included
    file_count         INTEGER NOT NULL,
    tensor_count       INTEGER NOT NULL,
    content_digest     BLOB NOT NULL,      -- SHA-256 of the manifest without its time: detects repeated puts
    parent             BLOB
) WITHOUT ROWID;
CREATE UNIQUE INDEX checkpoints_by_run_step ON checkpoints(run_id, step);
CREATE INDEX checkpoints_by_created ON checkpoints(created_at);

-- Which chunks each checkpoint needs (its manifest frame included), with how often each is used.
CREATE TABLE checkpoint_chunks (
    checkpoint_id BLOB NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    digest        BLOB NOT NULL,
    uses          INTEGER NOT NULL,
    PRIMARY KEY (checkpoint_id, digest)
) WITHOUT ROWID;
CREATE INDEX checkpoint_chunks_by_digest ON checkpoint_chunks(digest);

CREATE TABLE tags (
    checkpoint_id BLOB NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    tag           TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, tag)
) WITHOUT ROWID;
CREATE INDEX tags_by_tag ON tags(tag);

CREATE TABLE metrics (
    checkpoint_id BLOB NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    value         REAL NOT NULL,
    PRIMARY KEY (checkpoint_id, key)
) WITHOUT ROWID;
