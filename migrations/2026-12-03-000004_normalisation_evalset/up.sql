-- A model's input normalisation (JSON: off, pooling with the trainers'
-- reports, or frozen mean and std) and the held-out evaluation set an
-- administrator attached (the CSV as uploaded, features unnormalised).
ALTER TABLE models ADD COLUMN normalisation TEXT;
ALTER TABLE models ADD COLUMN evalset TEXT;
