"""Sphinx configuration of the xas_bluesky documentation."""

project = "xas_bluesky"
author = "xas_bluesky developers"
copyright = "2026, xas_bluesky developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
autodoc_mock_imports = []
autodoc_typehints = "description"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
nitpicky = False
