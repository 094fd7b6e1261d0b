"""Orchestration: profiles, the stage graph, the artifact cache and the command line."""
