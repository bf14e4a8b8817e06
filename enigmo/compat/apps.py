"""Django app config for the compatibility surfaces."""

from django.apps import AppConfig


class CompatConfig(AppConfig):
    name = "enigmo.compat"
    label = "compat"
    default_auto_field = "django.db.models.BigAutoField"
