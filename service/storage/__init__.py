"""The database: engine and sessions, this service's rows, Optuna's tables, migrations."""
