"""Shared pytest setup. Fixtures live in one module per area, loaded as plugins here."""

pytest_plugins = [
    "tests.fixtures_modbus",
    "tests.fixtures_http",
    "tests.fixtures_mqtt",
    "tests.fixtures_influx",
    "tests.fixtures_db",
    "tests.daemon_helpers",
]
