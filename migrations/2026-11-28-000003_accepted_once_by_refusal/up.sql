-- The idempotency index used to be partial on `status != 'refused'`. Its
-- keys (model, trainer, update_id) land all over the index, and because the
-- condition names `status`, marking an update applied rewrote its entry:
-- one random index page per folded update, on top of the one its insert
-- touched. Accepted rows are exactly those without a refusal code, a
-- column that never changes after the insert, so the entry is now written
-- once and left alone.
UPDATE updates SET refusal_code = 'refused'
    WHERE status = 'refused' AND refusal_code IS NULL;
DROP INDEX updates_accepted_once;
CREATE UNIQUE INDEX updates_accepted_once ON updates (model, trainer, update_id)
    WHERE refusal_code IS NULL;
