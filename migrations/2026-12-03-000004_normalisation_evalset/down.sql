ALTER TABLE models DROP COLUMN evalset;
ALTER TABLE models DROP COLUMN normalisation;
