"""The Celery app: Redis broker in production; eager (no broker) in the embedded default."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enigmo.settings")

app = Celery("enigmo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
