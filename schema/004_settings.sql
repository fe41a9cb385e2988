-- ckstore catalogue, version 4: store-wide settings (`ckstore init --level`, `ckstore settings`) and an index
-- of delta frames by base.
-- Keys: compression_level (zstd level for new chunks), max_delta_depth (longest chain of delta frames
-- a put may write before it stores a full "keyframe" again; 0 turns deltas off). A missing key means the
-- binary's default.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Delta frames by base: gc finds the live deltas whose base only they keep alive without scanning chunks.
CREATE INDEX chunks_by_base ON chunks(base) WHERE base IS NOT NULL;
