"""central/sql.py without a server: SQLite-style placeholders become psycopg's (property-tested), targets parse
into one of the two engines or a one-line error, and DSNs are printed without their password."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from central.sql import POSTGRESQL, SQLITE, TargetError, parse_target, redact, translate

_plain = st.text(alphabet="abcSELECT ,()=<>*_1\n", min_size=1, max_size=8)
_quoted = st.text(alphabet="ab?%' ", max_size=6).map(lambda s: "'" + s.replace("'", "''") + "'")


@given(st.lists(st.one_of(_plain, _quoted, st.just("?"), st.just("%")), max_size=20))
def test_positional_placeholders_outside_quotes_become_percent_s(tokens):
    sql = " ".join(tokens)
    out, order = translate(sql)
    expected = " ".join("%s" if t == "?" else t.replace("%", "%%") for t in tokens)
    assert out == expected and order is None


@given(st.lists(st.integers(1, 4), min_size=1, max_size=8))
def test_numbered_placeholders_give_the_parameter_order(numbers):
    sql = " AND ".join(f"x = ?{n}" for n in numbers)
    out, order = translate(sql)
    assert out == " AND ".join("x = %s" for _ in numbers)
    assert order == tuple(n - 1 for n in numbers)


def test_targets():
    assert parse_target("platform.db") == parse_target("sqlite:platform.db")
    assert parse_target("sqlite:/var/lib/p.db").path == Path("/var/lib/p.db")
    assert parse_target(Path("x.db")).backend == SQLITE
    t = parse_target("postgresql:host=db1 dbname=onecard")
    assert (t.backend, t.dsn) == (POSTGRESQL, "host=db1 dbname=onecard")
    assert parse_target("postgresql://u@db1/onecard").dsn == "postgresql://u@db1/onecard"
    for bad in ("postgresql:", "postgresql:  ", "sqlite:", ""):
        with pytest.raises(TargetError):
            parse_target(bad)


def test_passwords_are_not_printed():
    assert redact("host=db1 password=s3cret dbname=x") == "host=db1 password=*** dbname=x"
    assert redact("host=db1 password='a b' dbname=x") == "host=db1 password=*** dbname=x"
    assert redact("postgresql://onecard:s3cret@db1/onecard") == "postgresql://onecard:***@db1/onecard"
    assert "s3cret" not in str(parse_target("postgresql:user=u password=s3cret"))
