"""Sphinx configuration of the xas_bluesky documentation."""

import importlib
import sys

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
# the order of each module's source, not the alphabet
autodoc_member_order = "bysource"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
# external names (numpy, ophyd, caproto ...) stay unlinked rather than failing the -W build
nitpicky = False

_ROOTS = ("xas_bluesky.", "sim_iocs.")
_ATTRIBUTE_KINDS = {"attribute", "data", "property"}
_saved_attribute_docs: dict[str, list[str]] = {}


def _keep_attribute_doc(app, what, name, obj, options, lines):
    """Before napoleon: remember an attribute's docstring (``#:`` comments)."""
    if what in _ATTRIBUTE_KINDS:
        _saved_attribute_docs[name] = list(lines)


def _restore_attribute_doc(app, what, name, obj, options, lines):
    """After napoleon: put it back.

    Napoleon reads the text before an attribute docstring's first colon as its type (Google's
    inline ``type: description``); the project's ``#:`` comments are prose (``mono calibration:
    true photon energy = ...``) and their types are annotations.
    """
    saved = _saved_attribute_docs.pop(name, None)
    if what in _ATTRIBUTE_KINDS and saved is not None:
        lines[:] = saved


def _documented_names(target):
    """Where a re-exported ``xas_bluesky`` name is documented: its defining module (classes,
    functions), or any module of the project that binds the same object to the same name."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:i]))
        except Exception:
            continue
        try:
            obj = getattr(module, parts[i])
        except Exception:
            return []
        rest = "".join(f".{p}" for p in parts[i + 1 :])
        names = []
        owner, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(owner, str) and isinstance(qualname, str):
            names.append(f"{owner}.{qualname}{rest}")
        for name, other in sorted(sys.modules.items()):
            if name.startswith(_ROOTS) and vars(other).get(parts[i]) is obj:
                names.append(f"{name}.{parts[i]}{rest}")
        return [n for n in dict.fromkeys(names) if n != target]
    return []


def _resolve_reexport(app, env, node, contnode):
    """Resolve a reference to a name the API page documents under another module: a package's
    re-export (``xas_bluesky.science.compare.Comparator`` is documented as
    ``xas_bluesky.science.compare.comparator.Comparator``), or a short name in a docstring of the
    module that imports it.  A target broken over two lines of a docstring is joined."""
    if node.get("refdomain") != "py":
        return None
    target = "".join(node.get("reftarget", "").split()).lstrip(".")
    context = node.get("py:module") or ""
    tries = [target] if target.startswith(_ROOTS) else []
    if context.startswith(_ROOTS) or context in ("xas_bluesky", "sim_iocs"):
        tries.append(f"{context}.{target}")
    domain = env.get_domain("py")
    for attempt in tries:
        for name in [attempt, *_documented_names(attempt)]:
            ref = domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], name, node, contnode
            )
            if ref is not None:
                return ref
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _keep_attribute_doc, priority=400)
    app.connect("autodoc-process-docstring", _restore_attribute_doc, priority=600)
    app.connect("missing-reference", _resolve_reexport)
