"""Database fixtures: real SQLite files in tmp_path."""
