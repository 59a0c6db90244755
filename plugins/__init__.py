"""First-party fine-tuning plugins of inspectnet (installed as ``inspectnet_plugins``).

Each module defines one :class:`inspectnet.plugins.Plugin` subclass, registered through the
``inspectnet.plugins`` entry-point group in pyproject.toml exactly as third-party plugins are.
"""
