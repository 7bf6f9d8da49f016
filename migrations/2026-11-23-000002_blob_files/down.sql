ALTER TABLE versions DROP COLUMN weights_file;
ALTER TABLE updates DROP COLUMN payload_file;
