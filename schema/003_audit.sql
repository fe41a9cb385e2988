-- ckstore catalogue, version 3: what the audit needs to answer without reading manifests.

-- A named piece of a run's checkpoints: a file, a tensor or torch storage of a file (tensor = its name),
-- or the rest of a tensor-aware file (tensor = ''). Interned so that chunks and checkpoints refer to one
-- by number.
CREATE TABLE labels (
    id     INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    path   TEXT NOT NULL,
    tensor TEXT NOT NULL DEFAULT '',
    UNIQUE (run_id, path, tensor)
);

-- The label of the piece that first stored each chunk: stored bytes by part and by tensor come from one
-- scan of the chunks. NULL for manifests, annotations, and chunks stored before version 3 that no
-- manifest still names.
ALTER TABLE chunks ADD COLUMN label INTEGER;

-- The logical size of each piece of each checkpoint (what `get` writes for it); a part rule that drops
-- a file or a tensor removes its rows.
CREATE TABLE checkpoint_labels (
    checkpoint_id BLOB NOT NULL,
    label         INTEGER NOT NULL,
    logical_bytes INTEGER NOT NULL,
    PRIMARY KEY (checkpoint_id, label)
) WITHOUT ROWID;
