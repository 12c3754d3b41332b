"""helios-hpo: the hyperparameter-search service built on helios and Optuna."""
