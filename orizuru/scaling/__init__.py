"""Planning and scaling laws: `orizuru plan` (Chinchilla arithmetic) and `orizuru scaling` (sweeps and fits)."""
