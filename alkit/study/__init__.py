"""Studies: the config schema, the grid of tracked runs, the summary tables and plots, MLflow tracking, the demo."""
