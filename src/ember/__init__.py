"""Ember: one offline platform for the whole life of a language model.

    pip install -e . && ember --help

    from ember import Engine, SamplingParams
    engine = Engine.load("smollm2-135m-instruct")
    print(engine.generate(["The capital of France is"], SamplingParams(max_tokens=8))[0].text)

The names below are Ember's public Python API (docs/python-api.md). They are imported on first use (PEP 562
module `__getattr__`), so `import ember` and the `ember` command do not pay for torch until a name that
needs it is touched.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # inference
    "Engine": "ember.engine.engine",
    "SamplingParams": "ember.engine.sampling",
    "Completion": "ember.engine.scheduler",
    "Encoder": "ember.engine.encoders",
    # registry
    "VersionInfo": "ember.store.registry",
    "resolve": "ember.store.registry",
    "list_versions": "ember.store.registry",
    "register_folder": "ember.store.registry",
    "set_alias": "ember.store.registry",
    "alias_history": "ember.store.registry",
    "tag": "ember.store.registry",
    "delete": "ember.store.registry",
    "materialize": "ember.store.registry",
    "export": "ember.store.registry",
    "verify": "ember.store.registry",
    "pull": "ember.store.importers",
    "import_path": "ember.store.importers",
    # configuration and errors
    "Settings": "ember.config",
    "get_settings": "ember.config",
    "EmberError": "ember.errors",
    "InvalidRequest": "ember.errors",
    "NotFound": "ember.errors",
    "CorruptFile": "ember.errors",
    "Unsupported": "ember.errors",
    "Conflict": "ember.errors",
    "Unauthorized": "ember.errors",
    "Forbidden": "ember.errors",
    "Overloaded": "ember.errors",
}

__all__ = ["__version__", *_EXPORTS.keys()]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ember' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
