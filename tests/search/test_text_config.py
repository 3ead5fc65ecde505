"""SEARCH_TEXT_CONFIG: a configuration name, checked against the database at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gemini_backend.main import create_app
from tests.conftest import BACKEND

postgresql_only = pytest.mark.skipif(
    BACKEND != "production", reason="the text-search configuration is PostgreSQL's"
)


@pytest.mark.parametrize("name", ["english; DROP TABLE messages", "'simple'", "", "a.b.c", "é"])
def test_a_name_that_is_no_identifier_is_refused(make_settings, name):
    with pytest.raises(ValidationError, match="search_text_config"):
        make_settings(search_text_config=name)


@postgresql_only
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("klingon", "is not a text-search configuration"),
        ("english", "built with another configuration"),
        ("pg_catalog.english", "built with another configuration"),
    ],
)
async def test_the_api_refuses_to_start_on_a_configuration_it_cannot_serve(
    make_settings, clock, name, problem
):
    app = create_app(make_settings(search_text_config=name), clock=clock)
    with pytest.raises(RuntimeError, match=problem):
        async with app.router.lifespan_context(app):
            pass


@postgresql_only
async def test_the_configuration_the_columns_were_built_with_starts(make_settings, clock):
    app = create_app(make_settings(search_text_config="pg_catalog.simple"), clock=clock)
    async with app.router.lifespan_context(app):
        assert app.state.services.search.text_config == "pg_catalog.simple"
