DROP INDEX updates_accepted_once;
CREATE UNIQUE INDEX updates_accepted_once ON updates (model, trainer, update_id)
    WHERE status != 'refused';
