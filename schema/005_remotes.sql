-- ckstore catalogue, version 5: what this store knows of its remotes (`ckstore remote`, push and pull).
-- A cache: every row comes from the remote's own objects, and losing it costs only re-reading them. The
-- remotes themselves (name, URL, endpoint) are in remotes.json beside the catalogue, so that a catalogue
-- rebuilt by `repair` keeps them.

-- Index objects of a remote whose frames are in remote_frames.
CREATE TABLE remote_indexes (
    remote TEXT NOT NULL,
    name   TEXT NOT NULL,                  -- the object's name: the SHA-256 of its bytes, in hex
    PRIMARY KEY (remote, name)
) WITHOUT ROWID;

-- Where a remote holds each frame it has, per index object that lists it (two machines may have uploaded
-- the same chunk; a pull uses the copy its commit's index objects name).
CREATE TABLE remote_frames (
    remote        TEXT NOT NULL,
    digest        BLOB NOT NULL,
    index_name    TEXT NOT NULL,
    pack          TEXT NOT NULL,           -- the pack object's name (SHA-256 of its bytes, in hex)
    offset        INTEGER NOT NULL,        -- of the frame header in that pack
    stored_length INTEGER NOT NULL,
    raw_length    INTEGER NOT NULL,
    encoding      INTEGER NOT NULL,
    kind          INTEGER NOT NULL,
    base          BLOB,
    PRIMARY KEY (remote, digest, index_name)
) WITHOUT ROWID;
CREATE INDEX remote_frames_by_index ON remote_frames(remote, index_name);

-- Commit objects read from a remote (or written by a push from here), as their JSON.
CREATE TABLE remote_commits (
    remote TEXT NOT NULL,
    key    TEXT NOT NULL,                  -- commits/<run key>/<step>
    id     BLOB NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (remote, key)
) WITHOUT ROWID;

-- When this store last listed a remote's commits (a push lists them once, to learn what other machines
-- pushed; later pushes only read objects by name).
CREATE TABLE remote_state (
    remote    TEXT PRIMARY KEY,
    synced_at REAL NOT NULL
) WITHOUT ROWID;
