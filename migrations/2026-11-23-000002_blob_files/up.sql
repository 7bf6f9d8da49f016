-- Large payloads and checkpoints live in files beside the database (one
-- SQLite blob write of hundreds of MB is slow and bloats the WAL); these
-- columns name the file, relative to the blob directory.
ALTER TABLE updates ADD COLUMN payload_file TEXT;
ALTER TABLE versions ADD COLUMN weights_file TEXT;
