"""The versioned SQL files (NNNN_name.sql) that storage/migrate.py applies in order."""
