"""The report's parts: how models and engines are named in it, its markdown page and its plots.
The report stage (stages/report.py) gathers the figures and writes them through these."""
