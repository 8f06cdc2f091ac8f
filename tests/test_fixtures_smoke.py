import psycopg


def test_pg_url_gives_empty_database(pg_url: str) -> None:
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select count(*) from information_schema.tables where table_schema='public'")
        assert rows.fetchone() == (0,)
