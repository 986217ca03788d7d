from tests.integration.conftest import database_url, mail_server, postgres, template_database

__all__ = ["database_url", "mail_server", "postgres", "template_database"]
