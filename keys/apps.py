"""Django app config for accounts, devices and keys."""

from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "keys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import enigmo.schema  # noqa: F401  (registers the OpenAPI authenticator extensions)
