-- ckstore catalogue, version 7: frames that need chunks besides their base (issue 18).
-- A predicted frame (encoding 5) stores fp32 weights as their difference from a prediction made from its
-- base (the parent checkpoint's weights) and four inputs: Adam's moments of its own and of the parent
-- checkpoint. Its inputs are named at the start of its payload, so that a rebuild finds them in the packs;
-- here they are rows, so that gc, verify, audit and pushes follow them as they follow `chunks.base`.
-- The rows go with their chunk's row.
CREATE TABLE chunk_inputs (
    digest BLOB NOT NULL REFERENCES chunks(digest) ON DELETE CASCADE,
    input  BLOB NOT NULL,
    PRIMARY KEY (digest, input)
) WITHOUT ROWID;
CREATE INDEX chunk_inputs_by_input ON chunk_inputs(input);

-- A remote's frames as its index objects list them, with their inputs (concatenated digests) beside their base.
ALTER TABLE remote_frames ADD COLUMN inputs BLOB;
