"""Scripts around a local MLflow tracking server for alkit studies (see ``mlflow_setup/README.md``).

The Python API lives in :mod:`mlflow_setup.server` (``start_server``, ``stop_server``, ``status``);
it is not imported here so that ``python -m mlflow_setup.server`` runs the module only once.
"""
