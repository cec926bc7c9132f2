"""Fixtures for every test folder come from the plugin ``tests.helpers.fixtures``:
``pg`` (the session's PostgreSQL server), ``start_dev`` / ``start_module_dev``
(``krypton dev`` stacks). See ``tests/helpers/README.md``.
"""

pytest_plugins = ["tests.helpers.fixtures"]
