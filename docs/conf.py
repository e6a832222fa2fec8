"""Sphinx configuration of the jaxrel documentation (offline: no intersphinx, no downloads).

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import ast
import inspect
import os
import sys
import textwrap

# Document the working tree, even where an older jaxrel is installed in the environment.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from jaxrel.version import __version__  # noqa: E402

project = "jaxrel"
author = "the jaxrel authors"
copyright = "jaxrel authors"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
root_doc = "index"
language = "en"

# -- autodoc ---------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
# Type hints are left out of the pages: the docstrings state shapes, dtypes and units, and
# the jax/flax/numpy annotations (jax.Array, nnx.Rngs, unions of them) render poorly.
autodoc_typehints = "none"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autoclass_content = "class"  # no __init__ carries its own docstring

# -- napoleon (Google-style docstrings) --------------------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" of a dataclass become :ivar: fields, so they do not duplicate the
# attribute entries autodoc writes for the dataclass fields.
napoleon_use_ivar = True
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- HTML ------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"jaxrel {release}"
html_static_path = []
html_theme_options = {
    "description": "Explain machine-learned interatomic potentials in JAX",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
# MathJax is loaded by the reader's browser when a page is opened; the build itself needs
# no network.


# -- docstring tidying -----------------------------------------------------
_FIELD_ALIAS = "Alias for field number "
_ATTRIBUTE_KINDS = ("attribute", "data", "property")
_attribute_docstrings: dict[str, list[str]] = {}


def _before_napoleon(app, what, name, obj, options, lines):
    """Runs before napoleon (priority 400 < 500) on every docstring autodoc reads.

    NamedTuple fields carry the generated docstring "Alias for field number k": it is
    dropped (the class docstring describes the fields). Attribute, data and property
    docstrings are kept aside for :func:`_after_napoleon`.
    """
    text = [line for line in lines if line.strip()]
    if len(text) == 1 and text[0].startswith(_FIELD_ALIAS):
        lines.clear()
    if what in _ATTRIBUTE_KINDS:
        _attribute_docstrings[name] = list(lines)


def _after_napoleon(app, what, name, obj, options, lines):
    """Runs after napoleon (priority 600): attribute docstrings as written.

    jaxrel's attribute, data and property docstrings read "what it is, unit: more text".
    Napoleon would take the text before the first colon for a *type* and print it under a
    "Type:" heading; no jaxrel attribute docstring means that, so napoleon's output for
    them is replaced by the docstring itself (plain reST).
    """
    if what in _ATTRIBUTE_KINDS and name in _attribute_docstrings:
        lines[:] = _attribute_docstrings.pop(name)


class _Source:
    """A default value shown as its source text."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


def _init_signature(cls):
    """``(d_in, d_hidden, …)`` of a class's own ``__init__`` (annotations left out, defaults as
    written), or None where the class does not define one."""
    init = cls.__dict__.get("__init__")
    if init is None:
        return None
    signature = inspect.signature(init)
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(init))).body[0]
        arguments = node.args
        positional = arguments.posonlyargs + arguments.args
        written = {a.arg: ast.unparse(d) for a, d in zip(positional[len(positional) - len(arguments.defaults):],
                                                         arguments.defaults)}
        written |= {a.arg: ast.unparse(d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults)
                    if d is not None}
    except (OSError, TypeError, SyntaxError, IndexError):
        written = {}
    parameters = [parameter.replace(annotation=inspect.Parameter.empty,
                                    default=(parameter.default if parameter.default is inspect.Parameter.empty
                                             else _Source(written.get(parameter.name, repr(parameter.default)))))
                  for parameter in list(signature.parameters.values())[1:]]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def _class_signature(app, what, name, obj, options, signature, return_annotation):
    """Flax NNX modules show ``(*args, **kwargs)``, the signature of their metaclass's
    ``__call__``; show the arguments of the class's own ``__init__`` instead."""
    if what == "class" and signature == "(*args, **kwargs)" and inspect.isclass(obj):
        own = _init_signature(obj)
        if own is not None:
            return own, return_annotation
    return None


def setup(app):
    app.connect("autodoc-process-signature", _class_signature)
    app.connect("autodoc-process-docstring", _before_napoleon, priority=400)
    app.connect("autodoc-process-docstring", _after_napoleon, priority=600)
