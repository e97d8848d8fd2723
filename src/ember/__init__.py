"""Ember: one offline platform for the whole life of a language model.

    pip install -e . && ember --help
"""

__version__ = "0.1.0"
