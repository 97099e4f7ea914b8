"""Reports of run and study folders: tables and figures, read from the records only."""
