"""HTTP routes of Enigma Protocol v0.3 (included only when ENIGMO_COMPAT_ENIGMA_V03=1)."""

from django.urls import re_path

from enigmo.compat import views

urlpatterns = [
    re_path(r"^login/(?P<public_key>[\s\S]+)$", views.v03_login, name="compat-v03-login"),
    re_path(r"^connect/(?P<user_id>[^/]+)$", views.v03_connect, name="compat-v03-connect"),
]
