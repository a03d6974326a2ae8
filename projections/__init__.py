"""Read models built from the event log, the runner that feeds them, and the read-side queries."""
