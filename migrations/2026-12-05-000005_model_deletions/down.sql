DROP TABLE model_deletions;
