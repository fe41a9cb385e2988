-- ckstore catalogue, version 8: what each checkpoint cost to make durable (issue 27).
-- `ckstore advise` weighs how often to checkpoint against how long a checkpoint takes: the seconds of each
-- put and each push, recorded as they happen (checkpoints stored before version 8 have none). A cache of
-- measurements, not state: `repair` does not bring it back, and losing it only makes advise wait for new
-- measurements. The rows go with their checkpoint. A rowid table: SQLite 3.40's quick_check reports the
-- NOT NULL columns after a WITHOUT ROWID table's out-of-order key as NULL when they are not.
CREATE TABLE checkpoint_costs (
    checkpoint  BLOB NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('put', 'push')),
    seconds     REAL NOT NULL,
    bytes       INTEGER NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (checkpoint, kind, recorded_at)
);
