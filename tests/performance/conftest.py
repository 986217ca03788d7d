from tests.integration.conftest import database_url, postgres, template_database

__all__ = ["database_url", "postgres", "template_database"]
