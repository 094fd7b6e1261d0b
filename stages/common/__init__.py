"""What the orchestration (pipeline/) and the stages both use: errors, the typed profile configs,
the machine fingerprint and the distributed helpers. Imports nothing from either."""
