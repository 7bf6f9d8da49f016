DROP TABLE evaluators;
