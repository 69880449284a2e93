"""Puts the repository root on sys.path, so the library-only environment (.venv-lib), which does
not install the project, imports `lade_tf` from the checkout."""
