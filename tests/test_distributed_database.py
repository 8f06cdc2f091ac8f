"""Where ``simulate --distributed`` creates its database without ``POSTGRES_URL``: libpq's ``PGHOST`` /
``PGPORT`` / ``PGUSER`` (default 127.0.0.1:5432, user postgres), and the ``dropdb`` line it prints."""

from __future__ import annotations

import pytest

from intents_mm.distributed import database_server, dropdb_command
from intents_mm.errors import IntentsMMError


def test_defaults_are_the_local_server() -> None:
    assert database_server({}) == ("127.0.0.1", 5432, "postgres")
    assert database_server({"PGHOST": " ", "PGPORT": "", "PGUSER": ""}) == ("127.0.0.1", 5432, "postgres")


def test_libpq_variables_name_another_server() -> None:
    env = {"PGHOST": "db.internal", "PGPORT": "15432", "PGUSER": "mm"}
    assert database_server(env) == ("db.internal", 15432, "mm")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PGPORT": "54x2"}, "PGPORT='54x2' is not a TCP port"),
        ({"PGPORT": "0"}, "PGPORT='0' is not a TCP port"),
        ({"PGPORT": "65536"}, "PGPORT='65536' is not a TCP port"),
        ({"PGPORT": "５４３２"}, "is not a TCP port"),  # fullwidth digits are not a port
        ({"PGHOST": "/var/run/postgresql"}, "is not one TCP host name or address"),
        ({"PGHOST": "a,b"}, "is not one TCP host name or address"),
    ],
)
def test_bad_values_are_one_line_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(IntentsMMError) as info:
        database_server(env)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_dropdb_command_names_a_port_only_when_not_the_default() -> None:
    assert dropdb_command("127.0.0.1", 5432, "postgres", "d1") == "dropdb -h 127.0.0.1 -U postgres d1"
    assert dropdb_command("127.0.0.1", 25432, "mm", "d1") == "dropdb -h 127.0.0.1 -p 25432 -U mm d1"
