-- ckstore catalogue, version 6: shards of checkpoints that many ranks write (issue 19).
-- A shard is one rank's files of checkpoint RUN@STEP, put as shard I of N. Until all N are committed the
-- checkpoint is pending: it has no row in `checkpoints`, so nothing lists, resolves or retains it. The
-- put that commits the last shard writes the combined manifest and inserts the checkpoint, and deletes
-- these rows in the same transaction. Like every row, these come back from the packs and the shard
-- records (shards/<run key>/<step>/<I>-of-<N>) in a rebuild.
CREATE TABLE pending_shards (
    run_id         INTEGER NOT NULL REFERENCES runs(id),
    step           INTEGER NOT NULL,
    shard_index    INTEGER NOT NULL,       -- I, from 0
    shard_count    INTEGER NOT NULL,       -- N
    manifest_id    BLOB NOT NULL,          -- the shard manifest's SHA-256 (its frame's digest)
    content_digest BLOB NOT NULL,          -- the shard manifest without its time and parent
    created_at     REAL NOT NULL,
    logical_bytes  INTEGER NOT NULL,
    stored_bytes_added INTEGER NOT NULL,   -- frame bytes the shard's put wrote
    PRIMARY KEY (run_id, step, shard_index)
) WITHOUT ROWID;

-- The chunks each pending shard needs (its manifest frame included): gc keeps them as it keeps a
-- checkpoint's, until the shard is combined or found stale.
CREATE TABLE shard_chunks (
    manifest_id BLOB NOT NULL,
    digest      BLOB NOT NULL,
    uses        INTEGER NOT NULL,
    PRIMARY KEY (manifest_id, digest)
) WITHOUT ROWID;

-- Chunks a partial pull brought (`get --remote --shard` or `--file`: the files one rank needs, not the
-- whole checkpoint), kept by gc until the hold expires so that the restore that follows finds them; then
-- they are a cache that gc frees like any unreferenced chunk.
CREATE TABLE chunk_holds (
    digest     BLOB PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
