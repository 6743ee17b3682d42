"""The daemon: settings, engine, scheduler, CLI, logging and status.

Every CLI command is a function here that tests can call directly.
"""

__version__ = "0.1.0"
